//! The supervisor's only `unsafe`: Linux calls std does not offer.
//! - `kill(-pgid, sig)`: signals a whole process group, so a worker's own
//!   children are stopped with it.
//! - `prctl(PR_SET_PDEATHSIG, SIGKILL)` in the child between fork and exec,
//!   so an instance dies when centinela dies, even by SIGKILL. It fires when
//!   the *thread* that spawned the child exits: instances are spawned from
//!   runtime worker threads, which live as long as centinela.
//! - `sysconf` for the clock tick rate and page size, to read `/proc`.
//! - `write` to `cgroup.procs` and `setrlimit(RLIMIT_NOFILE)` in the child
//!   between fork and exec: an instance is inside its cgroup and under its
//!   limits before it runs a single instruction of its own.
//! - `pidfd_open`: a descriptor that becomes readable when a process exits,
//!   *before* it is reaped, so that its process group can be killed while
//!   its id cannot yet be reused.
#![allow(unsafe_code)]

use std::io;

/// Sends `sig` to the process group `pgid`. False if no such group remains.
pub fn kill_group(pgid: u32, sig: i32) -> bool {
    let Ok(pgid) = i32::try_from(pgid) else {
        return false;
    };
    if pgid <= 1 {
        return false;
    }
    // SAFETY: kill(2) takes two integers and touches no memory of ours; a
    // negative pid addresses the group, never pid 1 or "every process" (-1)
    // because pgid > 1 was checked.
    unsafe { libc::kill(-pgid, sig) == 0 }
}

/// Asks the kernel to SIGKILL the child when its parent dies.
pub fn die_with_parent(cmd: &mut tokio::process::Command) {
    // SAFETY: getpid() is async-signal-safe, and so are the prctl(2) and
    // getppid(2) calls in the closure, which allocates nothing: all that
    // pre_exec requires between fork and exec.
    let parent = unsafe { libc::getpid() };
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect. (An error
            // from a raw code: `io::Error::other` would allocate.)
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Between fork and exec, the child joins its cgroup (writes "0" to each
/// `cgroup.procs` given, open) and lowers its open-file limit to `nofile`.
pub fn prepare_child(
    cmd: &mut tokio::process::Command,
    cgroup_procs: Vec<std::os::fd::OwnedFd>,
    nofile: Option<u64>,
) {
    use std::os::fd::AsRawFd;
    if cgroup_procs.is_empty() && nofile.is_none() {
        return;
    }
    // SAFETY: the closure calls only write(2), getrlimit(2) and
    // setrlimit(2), which are
    // async-signal-safe, on descriptors it owns (open, close-on-exec) and a
    // struct on its stack; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            for fd in &cgroup_procs {
                if libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(n) = nofile {
                let n = n as libc::rlim_t;
                let mut lim = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    // Above the hard limit without the right to raise it:
                    // as much of it as the hard limit allows.
                    if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    lim.rlim_cur = n.min(lim.rlim_max);
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
            }
            Ok(())
        });
    }
}

/// Clock ticks per second, the unit of CPU times in `/proc/PID/stat`.
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf(3) only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// The page size, the unit of RSS in `/proc/PID/stat`.
pub fn page_size() -> u64 {
    // SAFETY: sysconf(3) only reads a system constant.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// Sends `sig` to one process.
pub fn kill_pid(pid: u32, sig: i32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    if pid <= 1 {
        return false;
    }
    // SAFETY: as for kill_group; pid > 1 names one process.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Something to await that becomes ready when process `pid` exits, before
/// it is reaped (a pidfd, Linux 5.3+). `None` where pidfds are missing.
pub fn watch_exit(pid: u32) -> Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    let fd = pidfd_open(pid).ok()?;
    // SAFETY: an `OwnedFd` holds one open descriptor for its whole life
    // and always returns that same descriptor from `as_raw_fd`, which is
    // what `register` asks of its caller.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE).ok()
    }
}

/// A descriptor that becomes readable when process `pid` exits (Linux 5.3+).
fn pidfd_open(pid: u32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new file
    // descriptor or -1; no memory of ours is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel, is open, and is owned
    // by nothing else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}
