//! Kills every instance's process group when centinela dies, even by
//! SIGKILL. `PR_SET_PDEATHSIG` reaches only an instance's first process;
//! a gunicorn master's workers, or a shell's children, would live on. A
//! small `/bin/sh` process, in a process group of its own, reads
//! `add PGID` / `del PGID` lines on a pipe that only centinela writes; at
//! end of file (centinela is gone, however it died) it SIGKILLs the groups
//! still listed. Groups are listed from spawn until they are gone, so a
//! process group id used again later is never killed.

use std::io::Write;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use tracing::warn;

const SCRIPT: &str = r#"set -f
groups=" "
while read -r op pg; do
  case "$op $groups" in
    "add "*) groups="$groups$pg " ;;
    "del "*" $pg "*) groups="${groups%% $pg *} ${groups#* $pg }" ;;
  esac
done
for pg in $groups; do kill -9 "-$pg" 2>/dev/null; done
"#;

fn pipe() -> &'static Mutex<Option<ChildStdin>> {
    static PIPE: OnceLock<Mutex<Option<ChildStdin>>> = OnceLock::new();
    PIPE.get_or_init(|| {
        use std::os::unix::process::CommandExt;
        let spawned = Command::new("/bin/sh")
            .args(["-c", SCRIPT])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Not in centinela's group: it outlives a kill of that group.
            .process_group(0)
            .spawn();
        match spawned {
            Ok(mut child) => {
                let stdin = child.stdin.take();
                // It exits when centinela does; nobody waits for it.
                std::mem::forget(child);
                Mutex::new(stdin)
            }
            Err(e) => {
                warn!(error = %e, "Cannot start the reaper: an instance's children may outlive a killed centinela");
                Mutex::new(None)
            }
        }
    })
}

fn send(op: &str, pgid: u32) {
    let mut p = pipe().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(w) = p.as_mut() {
        if w.write_all(format!("{op} {pgid}\n").as_bytes()).is_err() {
            *p = None;
        }
    }
}

/// A process group listed with the reaper until dropped (once the group
/// is gone).
#[derive(Debug)]
pub struct Listed(u32);

impl Listed {
    pub fn new(pgid: u32) -> Listed {
        send("add", pgid);
        Listed(pgid)
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        send("del", self.0);
    }
}
