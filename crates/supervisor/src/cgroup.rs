//! Resource limits through cgroups: each instance of a service with
//! `limits` runs in a cgroup of its own, under a `centinela` parent beside
//! centinela's own cgroup. cgroup v2 where the host mounts it with the
//! memory, cpu and pids controllers (Debian 12's default); else the v1
//! hierarchies of those controllers. The instance joins its cgroup between
//! fork and exec (`sys::prepare_child`), so that every process it starts is
//! counted from the first.
//!
//! What the cgroup tells is read here too: CPU time and memory of the whole
//! tree (no /proc walk), OOM kills and CPU throttling.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use centinela_config::ServiceLimits as Limits;

const CFS_PERIOD_US: u64 = 100_000;

/// Where instances' cgroups are made.
#[derive(Debug)]
pub enum Cgroups {
    /// The `centinela` parent in the unified hierarchy.
    V2(PathBuf),
    /// The `centinela` parent in each controller's hierarchy.
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
        pids: PathBuf,
        /// CPU time (`cpuacct.usage`), when mounted.
        cpuacct: Option<PathBuf>,
    },
}

/// The cgroups of this host, found and prepared once; the error says why
/// none can be used.
pub fn cgroups() -> Result<&'static Cgroups, &'static str> {
    static ONCE: OnceLock<Result<Cgroups, String>> = OnceLock::new();
    ONCE.get_or_init(|| {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let own = fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        Cgroups::prepare(&mountinfo, &own)
    })
    .as_ref()
    .map_err(String::as_str)
}

/// For `check`: whether instances' cgroups can be made here, without
/// changing anything (a directory is made and removed where the parent
/// would go). `Ok` names the version used.
pub fn usable() -> Result<&'static str, String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let own = fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let (version, dirs) = Cgroups::locate(&mountinfo, &own)?;
    for d in dirs {
        let parent = d.parent().unwrap_or(&d);
        let probe = parent.join(format!("centinela-check.{}", std::process::id()));
        fs::create_dir(&probe)
            .map_err(|e| format!("cannot create a cgroup in {}: {e}", parent.display()))?;
        let _ = fs::remove_dir(&probe);
    }
    Ok(version)
}

/// A mount of a cgroup hierarchy: its mount point, the root of the
/// hierarchy it shows, and the v1 controllers on it (none for v2).
#[derive(Debug, PartialEq)]
struct Mount {
    point: PathBuf,
    root: String,
    controllers: Vec<String>,
    v2: bool,
}

fn mounts(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            let (root, point) = (*l.get(3)?, *l.get(4)?);
            let fstype = *r.first()?;
            let v2 = fstype == "cgroup2";
            if !v2 && fstype != "cgroup" {
                return None;
            }
            let controllers = if v2 {
                Vec::new()
            } else {
                r.get(2)?
                    .split(',')
                    .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains('='))
                    .map(str::to_string)
                    .collect()
            };
            Some(Mount {
                point: PathBuf::from(point.replace("\\040", " ")),
                root: root.to_string(),
                controllers,
                v2,
            })
        })
        .collect()
}

/// This process's cgroup in the hierarchy with `controller` (v1), or in
/// the unified one (`None`).
fn own_path(own: &str, controller: Option<&str>) -> Option<String> {
    own.lines().find_map(|line| {
        let mut f = line.splitn(3, ':');
        let (id, ctl, path) = (f.next()?, f.next()?, f.next()?);
        let hit = match controller {
            None => id == "0" && ctl.is_empty(),
            Some(c) => ctl.split(',').any(|x| x == c),
        };
        hit.then(|| path.to_string())
    })
}

/// The directory of this process's cgroup under mount `m`.
fn dir_of(m: &Mount, own: &str) -> PathBuf {
    let rel = own.strip_prefix(m.root.as_str()).unwrap_or(own);
    m.point.join(rel.trim_start_matches('/'))
}

fn write(path: &Path, text: &str) -> io::Result<()> {
    fs::write(path, text).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

fn mkdir(path: &Path) -> io::Result<()> {
    match fs::create_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(io::Error::new(
            e.kind(),
            format!("cannot create {}: {e}", path.display()),
        )),
        _ => Ok(()),
    }
}

impl Cgroups {
    /// Which version, and the `centinela` parent directories to use: for
    /// v2 the one, for v1 memory, cpu, pids and (optional) cpuacct.
    fn locate(mountinfo: &str, own: &str) -> Result<(&'static str, Vec<PathBuf>), String> {
        let all = mounts(mountinfo);
        let wanted = ["memory", "cpu", "pids"];
        if let Some(m) = all.iter().find(|m| m.v2) {
            let own_v2 = own_path(own, None).unwrap_or_else(|| "/".into());
            let base = dir_of(m, &own_v2);
            let available = fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
            if wanted
                .iter()
                .all(|c| available.split_whitespace().any(|a| a == *c))
            {
                return Ok(("v2", vec![base.join("centinela")]));
            }
        }
        let find = |c: &str| {
            all.iter()
                .find(|m| !m.v2 && m.controllers.iter().any(|x| x == c))
                .and_then(|m| Some(dir_of(m, &own_path(own, Some(c))?).join("centinela")))
        };
        let (Some(memory), Some(cpu), Some(pids)) = (find("memory"), find("cpu"), find("pids"))
        else {
            return Err(
                "no cgroup hierarchy with the memory, cpu and pids controllers is mounted".into(),
            );
        };
        Ok((
            "v1",
            [Some(memory), Some(cpu), Some(pids), find("cpuacct")]
                .into_iter()
                .flatten()
                .collect(),
        ))
    }

    fn prepare(mountinfo: &str, own: &str) -> Result<Cgroups, String> {
        let (version, mut dirs) = Self::locate(mountinfo, own)?;
        if version == "v2" {
            let parent = dirs.remove(0);
            return Self::prepare_v2(parent.parent().unwrap_or(&parent)).map_err(|e| e.to_string());
        }
        for d in &dirs {
            mkdir(d).map_err(|e| e.to_string())?;
        }
        let mut dirs = dirs.into_iter();
        let (Some(memory), Some(cpu), Some(pids)) = (dirs.next(), dirs.next(), dirs.next()) else {
            return Err("no cgroup hierarchy with the memory, cpu and pids controllers".into());
        };
        Ok(Cgroups::V1 {
            memory,
            cpu,
            pids,
            cpuacct: dirs.next(),
        })
    }

    /// v2 allows processes only in leaves once controllers are enabled
    /// for a cgroup's children: centinela moves into a leaf of its own
    /// (`centinela-self`) when its cgroup holds it, then enables them.
    fn prepare_v2(base: &Path) -> io::Result<Cgroups> {
        let enable = "+memory +cpu +pids";
        if write(&base.join("cgroup.subtree_control"), enable).is_err() {
            let me = base.join("centinela-self");
            mkdir(&me)?;
            write(&me.join("cgroup.procs"), &std::process::id().to_string())?;
            write(&base.join("cgroup.subtree_control"), enable)?;
        }
        let parent = base.join("centinela");
        mkdir(&parent)?;
        write(&parent.join("cgroup.subtree_control"), enable)?;
        Ok(Cgroups::V2(parent))
    }

    /// Makes a new cgroup named `name` (made unique) with `limits`.
    pub fn create(&self, name: &str, limits: &Limits) -> io::Result<Cgroup> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{name}.{}.{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let cg = match self {
            Cgroups::V2(parent) => Cgroup {
                v2: true,
                dirs: vec![parent.join(&name)],
                cpuacct: None,
            },
            Cgroups::V1 {
                memory,
                cpu,
                pids,
                cpuacct,
            } => Cgroup {
                v2: false,
                dirs: vec![memory.join(&name), cpu.join(&name), pids.join(&name)],
                cpuacct: cpuacct.as_ref().map(|c| c.join(&name)),
            },
        };
        for d in cg.dirs.iter().chain(cg.cpuacct.as_ref()) {
            mkdir(d)?;
        }
        if let Err(e) = cg.limit(limits) {
            cg.remove();
            return Err(e);
        }
        Ok(cg)
    }
}

/// One instance's cgroup (one directory per v1 hierarchy).
#[derive(Debug)]
pub struct Cgroup {
    v2: bool,
    /// v2: the one directory; v1: memory, cpu, pids.
    dirs: Vec<PathBuf>,
    cpuacct: Option<PathBuf>,
}

/// What a cgroup has counted.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// CPU time of every process that ran in it.
    pub cpu: Option<Duration>,
    /// Resident memory (anonymous and file pages) now.
    pub memory_bytes: Option<u64>,
    /// Processes the OOM killer ended.
    pub oom_kills: u64,
    /// Periods in which the CPU quota ran out, and the time spent waiting.
    pub throttled_periods: u64,
    pub throttled: Duration,
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `key value` lines (`memory.stat`, `cpu.stat`, `memory.events`...).
fn keyed(path: &Path, key: &str) -> Option<u64> {
    fs::read_to_string(path).ok()?.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

impl Cgroup {
    fn dir(&self, i: usize) -> &Path {
        &self.dirs[i.min(self.dirs.len() - 1)]
    }

    fn limit(&self, l: &Limits) -> io::Result<()> {
        if self.v2 {
            let d = self.dir(0);
            if let Some(m) = l.memory {
                write(&d.join("memory.max"), &m.to_string())?;
                // Past the limit: OOM-killed, not swapped out.
                let _ = write(&d.join("memory.swap.max"), "0");
            }
            if let Some(c) = l.cpu {
                let quota = ((c * CFS_PERIOD_US as f64) as u64).max(1000);
                write(&d.join("cpu.max"), &format!("{quota} {CFS_PERIOD_US}"))?;
            }
            if let Some(p) = l.pids {
                write(&d.join("pids.max"), &p.to_string())?;
            }
        } else {
            if let Some(m) = l.memory {
                write(&self.dir(0).join("memory.limit_in_bytes"), &m.to_string())?;
                // With swap accounting: no swap beyond the limit either.
                let memsw = self.dir(0).join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    let _ = write(&memsw, &m.to_string());
                }
            }
            if let Some(c) = l.cpu {
                let quota = ((c * CFS_PERIOD_US as f64) as u64).max(1000);
                write(
                    &self.dir(1).join("cpu.cfs_period_us"),
                    &CFS_PERIOD_US.to_string(),
                )?;
                write(&self.dir(1).join("cpu.cfs_quota_us"), &quota.to_string())?;
            }
            if let Some(p) = l.pids {
                write(&self.dir(2).join("pids.max"), &p.to_string())?;
            }
        }
        Ok(())
    }

    /// Each `cgroup.procs` file, open for writing: a child writes "0" to
    /// them between fork and exec to join.
    pub fn procs_files(&self) -> io::Result<Vec<OwnedFd>> {
        self.dirs
            .iter()
            .chain(self.cpuacct.as_ref())
            .map(|d| {
                fs::OpenOptions::new()
                    .write(true)
                    .open(d.join("cgroup.procs"))
                    .map(OwnedFd::from)
            })
            .collect()
    }

    pub fn usage(&self) -> Usage {
        if self.v2 {
            let d = self.dir(0);
            let stat = d.join("cpu.stat");
            Usage {
                cpu: keyed(&stat, "usage_usec").map(Duration::from_micros),
                memory_bytes: keyed(&d.join("memory.stat"), "anon")
                    .zip(keyed(&d.join("memory.stat"), "file"))
                    .map(|(a, f)| a + f),
                oom_kills: keyed(&d.join("memory.events"), "oom_kill").unwrap_or(0),
                throttled_periods: keyed(&stat, "nr_throttled").unwrap_or(0),
                throttled: Duration::from_micros(keyed(&stat, "throttled_usec").unwrap_or(0)),
            }
        } else {
            let stat = self.dir(1).join("cpu.stat");
            Usage {
                cpu: self
                    .cpuacct
                    .as_ref()
                    .and_then(|d| read_u64(&d.join("cpuacct.usage")))
                    .map(Duration::from_nanos),
                memory_bytes: keyed(&self.dir(0).join("memory.stat"), "total_rss")
                    .zip(keyed(&self.dir(0).join("memory.stat"), "total_cache"))
                    .map(|(a, f)| a + f),
                oom_kills: keyed(&self.dir(0).join("memory.oom_control"), "oom_kill").unwrap_or(0),
                throttled_periods: keyed(&stat, "nr_throttled").unwrap_or(0),
                throttled: Duration::from_nanos(keyed(&stat, "throttled_time").unwrap_or(0)),
            }
        }
    }

    /// Processes still in the cgroup (any that left the process group).
    pub fn pids(&self) -> Vec<u32> {
        fs::read_to_string(self.dir(2).join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Removes the cgroup once it is empty (SIGKILLing what is left, for
    /// up to a second).
    pub fn remove(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        for d in self.dirs.iter().chain(self.cpuacct.as_ref()) {
            while fs::remove_dir(d).is_err() && d.exists() {
                if std::time::Instant::now() >= deadline {
                    tracing::warn!(cgroup = %d.display(), "Cannot remove an instance's cgroup");
                    break;
                }
                for pid in self.pids() {
                    crate::sys::kill_pid(pid, libc::SIGKILL);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// "512 MiB", "1.5 GiB", "700 KiB".
pub fn format_bytes(b: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if b >= size {
            let v = b as f64 / size as f64;
            return if b % size == 0 {
                format!("{} {unit}", b / size)
            } else {
                format!("{v:.1} {unit}")
            };
        }
    }
    format!("{b} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "\
25 1 0:23 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
26 25 0:24 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
27 25 0:25 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
28 25 0:26 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
29 25 0:27 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
30 25 0:28 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
31 25 0:29 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const OWN_V1: &str =
        "9:name=systemd:/\n8:pids:/\n4:memory:/box/1\n2:cpuacct:/\n1:cpu:/\n0::/\n";

    #[test]
    fn hierarchies_and_own_cgroups_are_read_from_proc() {
        let m = mounts(V1);
        assert_eq!(m.len(), 6);
        assert_eq!(m[2].controllers, ["memory"]);
        assert_eq!(
            m[4].controllers,
            Vec::<String>::new(),
            "name=systemd is no controller"
        );
        assert!(m[5].v2);
        assert_eq!(own_path(OWN_V1, Some("memory")).as_deref(), Some("/box/1"));
        assert_eq!(own_path(OWN_V1, None).as_deref(), Some("/"));
        assert_eq!(
            dir_of(&m[2], "/box/1"),
            PathBuf::from("/sys/fs/cgroup/memory/box/1")
        );
        // In a cgroup namespace the mount shows a subtree.
        let ns = Mount {
            point: "/sys/fs/cgroup".into(),
            root: "/box".into(),
            controllers: vec![],
            v2: true,
        };
        assert_eq!(dir_of(&ns, "/box/1"), PathBuf::from("/sys/fs/cgroup/1"));
    }

    /// The v2 interface, on a directory standing in for the cgroup file
    /// system (this project's machines bind every controller to v1): which
    /// files get which values, and how the counts are read back.
    #[test]
    fn v2_limits_and_counts_go_through_the_unified_files() {
        let root = std::env::temp_dir().join(format!("centinela-cg2-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let own = root.join("system.slice/app.service");
        fs::create_dir_all(&own).unwrap();
        fs::write(
            own.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        let mountinfo = format!(
            "30 1 0:26 / {} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
            root.display()
        );
        let cgs = Cgroups::prepare(&mountinfo, "0::/system.slice/app.service\n").unwrap();
        let parent = own.join("centinela");
        assert!(matches!(&cgs, Cgroups::V2(p) if *p == parent), "{cgs:?}");
        let enabled = "+memory +cpu +pids";
        assert_eq!(
            fs::read_to_string(own.join("cgroup.subtree_control")).unwrap(),
            enabled
        );
        assert_eq!(
            fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap(),
            enabled
        );
        let limits = Limits {
            memory: Some(512 << 20),
            cpu: Some(1.5),
            pids: Some(256),
            nofile: None,
        };
        let cg = cgs.create("products-0", &limits).unwrap();
        let dir = cg.dirs[0].clone();
        assert!(dir.starts_with(&parent));
        let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("memory.max"), "536870912");
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("cpu.max"), "150000 100000");
        assert_eq!(read("pids.max"), "256");
        fs::write(dir.join("cpu.stat"), "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 40\nnr_throttled 12\nthrottled_usec 900000\n").unwrap();
        fs::write(
            dir.join("memory.stat"),
            "anon 1048576\nfile 4096\nkernel 100\n",
        )
        .unwrap();
        fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(
            cg.usage(),
            Usage {
                cpu: Some(Duration::from_millis(2500)),
                memory_bytes: Some(1_052_672),
                oom_kills: 1,
                throttled_periods: 12,
                throttled: Duration::from_millis(900),
            }
        );
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(format_bytes(512 << 20), "512 MiB");
        assert_eq!(format_bytes(3 << 29), "1.5 GiB");
        assert_eq!(format_bytes(100), "100 B");
    }
}
