//! `[service.NAME]` validation, with real files for command checks.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use centinela_config::{parse, ProbeKind, Restart};

struct Dir(std::path::PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir_with_scripts(tag: &str) -> Dir {
    let d = std::env::temp_dir().join(format!("centinela-svc-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(d.join("bin")).unwrap();
    std::fs::write(d.join("bin/app"), "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(d.join("bin/app"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(d.join("bin/notexec"), "data").unwrap();
    std::fs::set_permissions(
        d.join("bin/notexec"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    Dir(d)
}

const BASE: &str = r#"
[[listener]]
name = "web"
listen = "127.0.0.1:0"
[[route]]
upstream = "products"
[upstream.products]
"#;

#[test]
fn the_issue_example_loads_with_defaults_filled() {
    let d = dir_with_scripts("ok");
    let src = format!(
        r#"{BASE}
[service.products]
command = "bin/app"
args = ["--listen", "127.0.0.1:{{port}}", "--db", "data/products.db"]
env = {{ RUST_LOG = "info" }}
workdir = "."
instances = 4
ports = "8001-8004"
upstream = "products"
restart = "always"
backoff = {{ initial = "100ms", max = "30s", reset_after = "60s" }}
stop = {{ signal = "SIGTERM", timeout = "10s" }}
liveness = {{ http = "/health", interval = "2s", timeout = "1s", failures = 3 }}
readiness = {{ http = "/health", interval = "250ms", timeout = "1s" }}
logs = {{ dir = "logs/products", max_size = "10MB", keep = 5 }}
give_up = {{ restarts = 10, within = "5m" }}
"#
    );
    let file = d.0.join("centinela.toml");
    let cfg = parse(&src, file.to_str().unwrap())
        .unwrap_or_else(|e| panic!("{e}"))
        .config;
    let s = &cfg.services[0];
    assert_eq!(s.command, d.0.join("./bin/app"));
    assert_eq!(
        (s.instances, s.ports, s.port(3)),
        (4, Some((8001, 8004)), Some(8004))
    );
    assert_eq!(s.upstream.as_deref(), Some("products"));
    assert_eq!(s.restart, Restart::Always);
    assert_eq!(s.env, vec![("RUST_LOG".to_string(), "info".to_string())]);
    assert_eq!(s.stop.signal.number, 15);
    assert_eq!(
        s.liveness.as_ref().unwrap().kind,
        ProbeKind::Http("/health".into())
    );
    assert_eq!(
        s.readiness.as_ref().unwrap().interval,
        Duration::from_millis(250)
    );
    assert_eq!(s.logs.as_ref().unwrap().max_size, 10_000_000);
    assert_eq!(s.logs.as_ref().unwrap().dir, d.0.join("logs/products"));
    assert_eq!(s.give_up.as_ref().unwrap().within, Duration::from_secs(300));
    // The upstream gets its servers from the service: no static list needed.
    assert!(cfg.upstream("products").unwrap().servers.is_empty());
}

#[test]
fn a_hung_instance_is_found_in_3_s_and_killed_after_1_s_by_default() {
    let d = dir_with_scripts("hang");
    let src = format!(
        r#"{BASE}
retry = {{ per_try_timeout = "250ms" }}
[service.products]
command = "bin/app"
args = ["{{port}}"]
ports = "8001-8002"
upstream = "products"
liveness = {{ http = "/health" }}
[service.other]
command = "bin/app"
stop = {{ liveness_grace = "300ms" }}
"#
    );
    let file = d.0.join("centinela.toml");
    let cfg = parse(&src, file.to_str().unwrap())
        .unwrap_or_else(|e| panic!("{e}"))
        .config;
    let l = cfg.services[0].liveness.as_ref().unwrap();
    assert_eq!(
        (l.interval, l.timeout, l.failures),
        (Duration::from_secs(1), Duration::from_secs(1), 3)
    );
    assert_eq!(cfg.services[0].stop.liveness_grace, Duration::from_secs(1));
    assert_eq!(cfg.services[0].stop.timeout, Duration::from_secs(10));
    assert_eq!(
        cfg.services[1].stop.liveness_grace,
        Duration::from_millis(300)
    );
    let retry = &cfg.upstream("products").unwrap().retry;
    assert_eq!(retry.per_try_timeout, Some(Duration::from_millis(250)));
    // Off unless set; never zero.
    let bad = src.replace("\"250ms\"", "\"0s\"");
    let err = parse(&bad, file.to_str().unwrap()).unwrap_err().to_string();
    assert!(
        err.contains("upstream.products.retry.per_try_timeout: must be at least 1ms"),
        "{err}"
    );
    let without = src.replace("retry = { per_try_timeout = \"250ms\" }\n", "");
    let cfg = parse(&without, file.to_str().unwrap()).unwrap().config;
    assert_eq!(
        cfg.upstream("products").unwrap().retry.per_try_timeout,
        None
    );
}

#[test]
fn scale_and_limits_load_and_their_mistakes_are_named() {
    let d = dir_with_scripts("scale");
    let src = format!(
        r#"{BASE}
[service.products]
command = "bin/app"
args = ["{{port}}"]
instances = 2
ports = "8001-8009"
upstream = "products"
limits = {{ memory = "512MiB", cpu = 1.5, pids = 256, nofile = 65536 }}
scale = {{ min = 2, max = 8, target_in_flight = 20, up_after = "10s", down_after = "2m", cooldown = "30s", schedule = [ {{ cron = "0 8 * * 1-5", min = 4 }}, {{ cron = "0 20 * * *", min = 2 }} ] }}
"#
    );
    let file = d.0.join("centinela.toml");
    let cfg = parse(&src, file.to_str().unwrap())
        .unwrap_or_else(|e| panic!("{e}"))
        .config;
    let s = &cfg.services[0];
    assert_eq!(s.limits.memory, Some(512 << 20));
    assert_eq!(
        (s.limits.cpu, s.limits.pids, s.limits.nofile),
        (Some(1.5), Some(256), Some(65536))
    );
    let sc = s.scale.as_ref().unwrap();
    assert_eq!((sc.min, sc.max), (2, 8));
    assert_eq!(sc.target, centinela_config::ScaleTarget::InFlight(20.0));
    assert_eq!(
        (sc.up_after, sc.down_after, sc.cooldown),
        (
            Duration::from_secs(10),
            Duration::from_secs(120),
            Duration::from_secs(30)
        )
    );
    assert_eq!(sc.schedule.len(), 2);
    assert_eq!(sc.schedule[0].min, 4);

    let bad = src
        .replace("ports = \"8001-8009\"", "ports = \"8001-8004\"")
        .replace("max = 8", "max = 6")
        .replace("min = 4 }", "min = 7 }")
        .replace("cron = \"0 20 * * *\"", "cron = \"0 25 * * *\"")
        .replace(
            "target_in_flight = 20",
            "target_in_flight = 20, target_cpu = 50",
        )
        .replace("memory = \"512MiB\"", "memory = \"1KiB\"")
        .replace("cpu = 1.5", "cpu = 0");
    let err = parse(&bad, file.to_str().unwrap()).unwrap_err().to_string();
    for needle in [
        "service.products.scale: give one of target_in_flight and target_cpu",
        "service.products.scale: max is 6 but the ports pool has 4 port(s)",
        "service.products.scale.schedule[0].min: 7 is above scale.max (6)",
        "service.products.scale.schedule[1].cron: hour 25 is out of range 0-23",
        "service.products.limits.memory: must be at least 1MiB",
        "service.products.limits.cpu: must be a number greater than 0",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    let none = src.replace("target_in_flight = 20, ", "");
    let err = parse(&none, file.to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("service.products.scale: needs target_in_flight = N or target_cpu = PERCENT"),
        "{err}"
    );
}

#[test]
fn service_errors_are_all_reported_with_positions() {
    let d = dir_with_scripts("bad");
    let src = format!(
        r#"{BASE}
[service.a]
command = "bin/missing"
instances = 4
ports = "9001-9002"
upstream = "nope"

[service.b]
command = "bin/notexec"
ports = "9002"
restart = "sometimes"
stop = {{ signal = "SIGFOO" }}
liveness = {{ http = "/health", tcp = true }}

[service.c]
command = "definitely-not-a-program-on-path"
args = ["--port", "{{port}}"]
"#
    );
    let file = d.0.join("c.toml");
    let err = parse(&src, file.to_str().unwrap()).unwrap_err().to_string();
    for needle in [
        "service.a.command: command \"bin/missing\" not found",
        "service.a.ports: range \"9001-9002\" has 2 port(s) but instances = 4",
        "service.a.upstream: upstream \"nope\" is not defined",
        "service.b.command: ",
        "bin/notexec is not executable",
        "service.b.ports: port 9002 is also used by service \"a\"",
        "service.b.restart: unknown restart policy \"sometimes\"",
        "service.b.stop.signal: unknown signal \"SIGFOO\"",
        "service.b.liveness: give only one of http, tcp = true or exec",
        "service.c.command: command \"definitely-not-a-program-on-path\" not found in PATH",
        "service.c.ports: args use {port} but no ports are set",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    // Every line carries file:line:column.
    for line in err.lines().skip(1) {
        assert!(
            line.trim_start()
                .starts_with(&format!("{}:", file.display())),
            "{line}"
        );
    }
    // An upstream with neither servers nor a service is still an error.
    let err = parse(
        "[[listener]]\nname=\"w\"\nlisten=\"127.0.0.1:0\"\n[upstream.x]\n",
        "x.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("missing required key `servers`"), "{err}");
}

#[test]
fn probe_errors_point_at_the_probe() {
    let d = dir_with_scripts("warn");
    let file = d.0.join("w.toml");
    let src = format!("{BASE}servers = [\"127.0.0.1:1\"]\n[service.s]\ncommand = \"bin/app\"\n");
    let loaded = parse(&src, file.to_str().unwrap()).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);

    let src = format!("{BASE}servers = [\"127.0.0.1:1\"]\n[service.s]\ncommand = \"bin/app\"\nports = \"9100\"\nreadiness = {{ }}\n");
    let err = parse(&src, file.to_str().unwrap()).unwrap_err();
    let d0 = &err.errors[0];
    assert_eq!((d0.line, d0.column), (12, 13), "{d0}");
    assert!(d0.message.contains("needs one of http"), "{d0}");
}
