//! Real processes (shell scripts) under the supervisor.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use centinela_config::{
    GiveUp, Logs, Probe, ProbeKind, Restart, Service, ServiceBackoff, Signal, Stop,
};
use centinela_supervisor::{Instance, State};

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
fn tempdir(tag: &str) -> Dir {
    let d = std::env::temp_dir().join(format!("centinela-sup-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

fn service(dir: &Path, script: &str) -> Service {
    Service {
        name: "app".into(),
        command: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        env: vec![("GREETING".into(), "hello".into())],
        workdir: dir.to_path_buf(),
        instances: 1,
        ports: Some((9500, 9500)),
        upstream: None,
        restart: Restart::Always,
        backoff: ServiceBackoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(400),
            reset_after: Duration::from_secs(60),
        },
        stop: Stop {
            signal: Signal::TERM,
            timeout: Duration::from_secs(5),
            drain: Duration::from_secs(5),
            liveness_grace: Duration::from_secs(1),
        },
        liveness: None,
        // The scripts listen on no port: ready once `true` exits 0.
        readiness: Some(Probe {
            kind: ProbeKind::Exec(vec!["true".into()]),
            interval: Duration::from_millis(10),
            timeout: Duration::from_secs(1),
            failures: 1,
        }),
        logs: None,
        give_up: None,
        ready_timeout: Duration::from_secs(10),
        limits: Default::default(),
        scale: None,
    }
}

fn alive_u32(pid: u32) -> bool {
    centinela_testkit::alive(u64::from(pid))
}

async fn until(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    f()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_is_restarted_in_well_under_a_second_with_its_port_and_env() {
    let d = tempdir("kill");
    let svc = service(
        &d.0,
        "echo \"$GREETING $PORT $CENTINELA_INSTANCE\" > started.$$; exec sleep 300",
    );
    let inst = Instance::spawn(Arc::new(svc), 0);
    assert!(
        until(Duration::from_secs(5), || inst.status().state
            == State::Ready)
        .await
    );
    let first = inst.status().pid.unwrap();
    let marker = d.0.join(format!("started.{first}"));
    assert!(until(Duration::from_secs(5), || marker.exists()).await);
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap().trim(),
        "hello 9500 0"
    );

    let killed = Instant::now();
    assert!(std::process::Command::new("/bin/sh")
        .args(["-c", &format!("kill -9 {first}")])
        .status()
        .is_ok_and(|s| s.success()));
    assert!(
        until(Duration::from_secs(2), || inst
            .status()
            .pid
            .is_some_and(|p| p != first)
            && inst.status().state == State::Ready)
        .await,
        "not restarted: {:?}",
        inst.status()
    );
    let took = killed.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "first restart took {took:?}"
    );
    let st = inst.status();
    assert_eq!(st.restarts, 1);
    assert_eq!(st.last_exit.as_deref(), Some("signal 9"));
    assert_eq!(st.delays.front(), Some(&Duration::from_millis(50)));
    let pid = st.pid.unwrap();
    inst.stop().await;
    assert!(!alive_u32(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_exits_at_once_backs_off_to_the_cap_crash_loops_and_can_give_up() {
    let d = tempdir("loop");
    let svc = service(&d.0, "echo boom-$$ >&2; exit 3");
    let inst = Instance::spawn(Arc::new(svc.clone()), 0);
    assert!(
        until(Duration::from_secs(10), || inst.status().delays.len() >= 6).await,
        "{:?}",
        inst.status()
    );
    let st = inst.status();
    let ms: Vec<u128> = st.delays.iter().take(6).map(|d| d.as_millis()).collect();
    assert_eq!(ms, vec![50, 100, 200, 400, 400, 400]);
    // Between two tries it waits out its delay as crash-looping (each try
    // shows `starting` for the moment the process lives).
    assert!(
        until(Duration::from_secs(5), || inst.status().state
            == State::CrashLooping)
        .await,
        "{:?}",
        inst.status()
    );
    let st = inst.status();
    assert_eq!(st.last_exit.as_deref(), Some("exit code 3"));
    assert!(
        st.stderr_tail.iter().any(|l| l.starts_with("boom-")),
        "{:?}",
        st.stderr_tail
    );
    inst.stop().await;

    // With give_up, it is marked failed and left alone.
    let mut svc = svc;
    svc.give_up = Some(GiveUp {
        restarts: 3,
        within: Duration::from_secs(60),
    });
    let inst = Instance::spawn(Arc::new(svc), 0);
    assert!(
        until(Duration::from_secs(10), || inst.status().state
            == State::Failed)
        .await,
        "{:?}",
        inst.status()
    );
    let restarts = inst.status().restarts;
    assert_eq!(restarts, 3);
    // A negative check: over longer than the backoff cap, nothing restarts it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(inst.status().restarts, restarts);
    assert_eq!(inst.status().state, State::Failed);
    inst.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_reaches_the_whole_process_group_and_escalates_to_sigkill() {
    let d = tempdir("group");
    // The worker starts a child of its own and ignores SIGTERM.
    let mut svc = service(&d.0, "trap '' TERM; sleep 300 & echo $! > child.pid; wait");
    svc.stop.timeout = Duration::from_millis(300);
    let inst = Instance::spawn(Arc::new(svc), 0);
    let child_file = d.0.join("child.pid");
    assert!(
        until(Duration::from_secs(5), || std::fs::read_to_string(
            &child_file
        )
        .is_ok_and(|s| s.ends_with('\n')))
        .await
    );
    let child: u32 = std::fs::read_to_string(&child_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let leader = inst.status().pid.unwrap();
    assert!(alive_u32(leader) && alive_u32(child));
    let t = Instant::now();
    inst.stop().await;
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "SIGTERM was ignored, so stop waits for the timeout ({took:?})"
    );
    assert!(
        until(Duration::from_secs(2), || !alive_u32(leader)
            && !alive_u32(child))
        .await,
        "leader {leader} or child {child} outlived the stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_goes_to_rotating_log_files_that_keep_at_most_keep() {
    let d = tempdir("logs");
    let mut svc = service(&d.0, "i=0; while [ $i -lt 400 ]; do echo \"line $i of instance output\"; i=$((i+1)); done; exec sleep 300");
    svc.logs = Some(Logs {
        dir: d.0.join("logs"),
        max_size: 1000,
        keep: 3,
    });
    let inst = Instance::spawn(Arc::new(svc), 0);
    let current = d.0.join("logs/app-0.log");
    assert!(
        until(Duration::from_secs(5), || std::fs::read_to_string(&current)
            .is_ok_and(|s| s.contains("line 399 ")))
        .await,
        "last line never logged"
    );
    let mut names: Vec<String> = std::fs::read_dir(d.0.join("logs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["app-0.log", "app-0.log.1", "app-0.log.2"]);
    inst.stop().await;
}

/// Pids of a service's running instances, from the status view.
fn pids(sup: &centinela_supervisor::Supervisor, name: &str) -> Vec<Option<u64>> {
    let v = sup.view().to_json();
    v["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"] == name)
        .flat_map(|s| s["instances"].as_array().unwrap().clone())
        .map(|i| i["pid"].as_u64())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_scales_rolls_stops_and_starts_a_service() {
    use centinela_supervisor::{OpError, Supervisor};
    let d = tempdir("ops");
    let mut svc = service(&d.0, "exec sleep 300");
    svc.ports = None;
    let sup = Supervisor::start(std::slice::from_ref(&svc), None);
    // `n` instances, each running and ready.
    let ready = |n: usize| {
        let v = sup.view().to_json();
        let inst = v["services"][0]["instances"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        inst.len() == n
            && inst
                .iter()
                .all(|i| i["state"] == "ready" && i["pid"].is_u64())
    };
    assert!(until(Duration::from_secs(5), || ready(1)).await);

    // An instance that was restarted once does not fail a later scale-up.
    let first = pids(&sup, "app")[0].unwrap();
    assert!(std::process::Command::new("/bin/sh")
        .args(["-c", &format!("kill -9 {first}")])
        .status()
        .is_ok_and(|s| s.success()));
    assert!(
        until(Duration::from_secs(5), || ready(1)
            && sup.view().to_json()["services"][0]["instances"][0]
                ["restarts"]
                == 1)
        .await,
        "{}",
        sup.view().to_json()
    );
    assert_ne!(pids(&sup, "app")[0], Some(first));
    svc.instances = 3;
    let r = sup.apply(std::slice::from_ref(&svc)).await;
    assert_eq!(
        r,
        vec![Ok("app: scaled from 1 to 3 instance(s)".to_string())]
    );
    assert!(
        until(Duration::from_secs(5), || ready(3)).await,
        "{}",
        sup.view().to_json()
    );

    // A rolling restart replaces every instance (in place: no ports).
    let before = pids(&sup, "app");
    let r = sup.restart("app").await.unwrap();
    assert!(r.contains("3 instance(s) replaced"), "{r}");
    let after = pids(&sup, "app");
    assert_eq!(after.len(), 3);
    for p in &before {
        assert!(!after.contains(p), "{p:?} was not replaced");
        assert!(!alive_u32(p.unwrap() as u32));
    }

    // Stop, then start.
    assert!(sup.stop_service("app").await.unwrap().contains("stopped"));
    assert!(pids(&sup, "app").iter().all(Option::is_none));
    assert!(after.iter().all(|p| !alive_u32(p.unwrap() as u32)));
    assert!(sup.start_service("app").await.unwrap().contains("started"));
    assert!(until(Duration::from_secs(5), || ready(3)).await);
    assert_eq!(
        sup.restart("nosuch").await,
        Err(OpError::NotFound("nosuch".into()))
    );

    // Scale down by reload, then remove.
    svc.instances = 1;
    let r = sup.apply(std::slice::from_ref(&svc)).await;
    assert_eq!(
        r,
        vec![Ok("app: scaled from 3 to 1 instance(s)".to_string())]
    );
    assert!(until(Duration::from_secs(5), || ready(1)).await);
    let last = pids(&sup, "app")[0].unwrap();
    let r = sup.apply(&[]).await;
    assert_eq!(r, vec![Ok("app: removed".to_string())]);
    assert!(!alive_u32(last as u32));
    sup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_exits_takes_its_process_group_with_it() {
    let d = tempdir("leader-exit");
    // The first run leaves a child behind and exits 3; later runs stay.
    let svc = service(
        &d.0,
        "if [ ! -e child.pid ]; then sleep 300 & echo $! > child.pid; exit 3; fi; exec sleep 300",
    );
    let inst = Instance::spawn(Arc::new(svc), 0);
    let child_file = d.0.join("child.pid");
    assert!(
        until(Duration::from_secs(5), || std::fs::read_to_string(
            &child_file
        )
        .is_ok_and(|s| s.ends_with('\n')))
        .await
    );
    let child: u32 = std::fs::read_to_string(&child_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The group is killed while its exited leader is not yet reaped (its
    // pid, the group's id, cannot have been reused), then the instance is
    // restarted.
    assert!(
        until(Duration::from_secs(5), || inst.status().restarts == 1
            && inst.status().state == State::Ready)
        .await,
        "{:?}",
        inst.status()
    );
    assert_eq!(inst.status().last_exit.as_deref(), Some("exit code 3"));
    assert!(
        until(Duration::from_secs(2), || !alive_u32(child)).await,
        "the exited leader's child {child} outlived it"
    );
    inst.stop().await;
}

/// The service of `script` with `limits`; `None` (after checking that the
/// instance still starts, without a cgroup) where this host cannot make
/// cgroups: limits are a protection, not a precondition.
async fn limited(
    d: &Path,
    script: &str,
    limits: centinela_config::ServiceLimits,
) -> Option<Instance> {
    let mut svc = service(d, script);
    svc.limits = limits;
    let inst = Instance::spawn(Arc::new(svc), 0);
    if let Err(e) = centinela_supervisor::cgroup::usable() {
        eprintln!("no cgroups here ({e}): checking that the instance runs without");
        assert!(
            until(Duration::from_secs(5), || inst.status().state
                == State::Ready)
            .await
        );
        assert!(inst.status().cgroup.is_none());
        inst.stop().await;
        return None;
    }
    assert!(
        until(Duration::from_secs(5), || inst.status().cgroup.is_some()).await,
        "{:?}",
        inst.status()
    );
    Some(inst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_memory_limit_an_instance_is_oom_killed_reported_and_restarted_with_backoff() {
    let d = tempdir("oom");
    // 256 MiB written, under a 64 MiB limit.
    let script = "/usr/bin/python3 -c \"b = bytearray(b'x') * (256 << 20)\"";
    let limits = centinela_config::ServiceLimits {
        memory: Some(64 << 20),
        ..Default::default()
    };
    let Some(inst) = limited(&d.0, script, limits).await else {
        return;
    };
    assert!(
        until(Duration::from_secs(10), || inst.status().restarts >= 2).await,
        "{:?}",
        inst.status()
    );
    let st = inst.status();
    assert_eq!(
        st.last_exit.as_deref(),
        Some("OOM-killed (memory limit 64 MiB)")
    );
    // Restarted with backoff, as any crash.
    assert_eq!(
        st.delays
            .iter()
            .take(2)
            .map(|d| d.as_millis())
            .collect::<Vec<_>>(),
        [50, 100]
    );
    inst.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_bound_instance_is_throttled_to_its_quota() {
    let d = tempdir("cpu");
    let limits = centinela_config::ServiceLimits {
        cpu: Some(0.5),
        nofile: Some(100),
        ..Default::default()
    };
    let script = "ulimit -n > nofile.txt; while :; do :; done";
    let Some(inst) = limited(&d.0, script, limits).await else {
        return;
    };
    let cg = inst.status().cgroup.unwrap();
    let (u0, t0) = (cg.usage(), Instant::now());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (u1, took) = (cg.usage(), t0.elapsed());
    let used = (u1.cpu.unwrap() - u0.cpu.unwrap()).as_secs_f64();
    let share = used / took.as_secs_f64();
    assert!(
        (0.4..=0.6).contains(&share),
        "used {used:.2} s of CPU in {took:?}: {share:.2} cores, limit 0.5"
    );
    assert!(u1.throttled_periods > u0.throttled_periods, "{u1:?}");
    assert!(u1.throttled > u0.throttled, "{u1:?}");
    // nofile, through setrlimit.
    assert_eq!(
        std::fs::read_to_string(d.0.join("nofile.txt"))
            .unwrap()
            .trim(),
        "100"
    );
    inst.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_stops_at_pids() {
    let d = tempdir("pids");
    let limits = centinela_config::ServiceLimits {
        pids: Some(20),
        ..Default::default()
    };
    // Tries to start 200 processes that stay; no more than 20 may exist
    // at once. (A shell would exit at its first failed fork.)
    std::fs::write(
        d.0.join("bomb.py"),
        "import os, sys, time\n\
         for i in range(200):\n\
         \x20   try:\n\
         \x20       if os.fork() == 0:\n\
         \x20           time.sleep(300)\n\
         \x20           os._exit(0)\n\
         \x20   except OSError as e:\n\
         \x20       print('fork failed after', i, 'children:', e, file=sys.stderr, flush=True)\n\
         \x20       break\n\
         time.sleep(300)\n",
    )
    .unwrap();
    let script = "exec /usr/bin/python3 bomb.py";
    let Some(inst) = limited(&d.0, script, limits).await else {
        return;
    };
    let cg = inst.status().cgroup.unwrap();
    assert!(
        until(Duration::from_secs(10), || inst
            .status()
            .stderr_tail
            .iter()
            .any(|l| l.to_lowercase().contains("fork")))
        .await,
        "no fork failed: {:?}",
        inst.status()
    );
    let n = cg.pids().len();
    assert!((2..=20).contains(&n), "{n} processes in the cgroup");
    let pid = inst.status().pid.unwrap();
    inst.stop().await;
    assert!(!alive_u32(pid));
}
