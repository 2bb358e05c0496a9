//! A throwaway S3-compatible server: moto's server mode (PyPI package
//! `moto[server]`, installed by scripts/test.sh), on an ephemeral loopback
//! port, holding one bucket.
//!
//! [`S3Server::start`] accepts any key. [`S3Server::read_only`] checks
//! every request against IAM and hands out the key of a user allowed only
//! to get and list: an S3 that refuses writes. (moto 5.2 miscomputes the
//! signature of a list request whose prefix holds a `/` when it checks
//! them, so that server is for repos at the bucket's root.)

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct S3Server {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    pub bucket: String,
    /// (access key, secret key) to use.
    pub keys: (String, String),
}

/// Makes the bucket and the two users with boto3 (moto's dependency); the
/// first requests are let through unsigned (INITIAL_NO_AUTH_ACTION_COUNT),
/// every later one is checked against the users' policies.
const SETUP: &str = r#"
import boto3, json, sys
url, bucket = sys.argv[1], sys.argv[2]
kw = dict(endpoint_url=url, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
boto3.client("s3", **kw).create_bucket(Bucket=bucket)
if sys.argv[3] == "read-only":
    iam = boto3.client("iam", **kw)
    iam.create_user(UserName="reader")
    doc = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": "*"}]}
    iam.put_user_policy(UserName="reader", PolicyName="reader", PolicyDocument=json.dumps(doc))
    k = iam.create_access_key(UserName="reader")["AccessKey"]
    print(json.dumps([k["AccessKeyId"], k["SecretAccessKey"]]))
else:
    print(json.dumps(["centinela-test-key", "centinela-test-secret"]))
"#;

/// How many requests the read-only SETUP makes before the server checks
/// every one.
const SETUP_REQUESTS: &str = "4";

impl S3Server {
    /// A server that takes any key.
    pub fn start(bucket: &str) -> S3Server {
        S3Server::launch(bucket, false)
    }

    /// A server whose key may get and list but not write.
    pub fn read_only(bucket: &str) -> S3Server {
        S3Server::launch(bucket, true)
    }

    fn launch(bucket: &str, read_only: bool) -> S3Server {
        let mut cmd = Command::new("python3");
        if read_only {
            cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", SETUP_REQUESTS);
        }
        let mut child = cmd
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 -m moto.server (PyPI moto[server]; scripts/test.sh installs it)");
        let (tx, rx) = std::sync::mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        // Reads moto's log to its end, so that the server never blocks on
        // a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(at) = line.find("Running on http://127.0.0.1:") {
                    let _ = tx.send(line[at + "Running on ".len()..].trim().to_string());
                }
            }
        });
        let endpoint = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("moto server did not start within 30 s");
        let mut server = S3Server {
            child,
            endpoint,
            bucket: bucket.to_string(),
            keys: Default::default(),
        };
        let mode = if read_only { "read-only" } else { "open" };
        let out = Command::new("python3")
            .args(["-c", SETUP, &server.endpoint, bucket, mode])
            .output()
            .expect("python3 with boto3");
        assert!(
            out.status.success(),
            "S3 setup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("setup output");
        server.keys = (
            v[0].as_str().unwrap().to_string(),
            v[1].as_str().unwrap().to_string(),
        );
        server
    }

    /// Stops the server: from here every request is refused (a dead S3).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let port = self.endpoint.rsplit(':').next().unwrap_or("0").to_string();
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end
            && std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_ok()
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
