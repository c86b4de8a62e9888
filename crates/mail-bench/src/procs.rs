//! Server CPU and memory from `/proc`, per named group of process trees
//! (`--proc NAME=PID,PID…`: each PID and all its descendants).
//!
//! CPU: the sum of `utime + stime + cutime + cstime` (fields 14–17 of
//! `/proc/PID/stat`, in USER_HZ = 100 ticks per second on Linux) over every
//! live process of the trees, before and after a phase. Children that exit
//! during the phase (a Postfix `smtpd`, a Dovecot `imap`, a PostgreSQL
//! backend) are then counted in their parent's `cutime`/`cstime`.
//! Memory: the sum of `Pss:` of `/proc/PID/smaps_rollup` over the trees,
//! sampled every 200 ms; the peak is kept.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One named group of process trees.
#[derive(Clone, Debug)]
pub struct Group {
    pub name: String,
    pub roots: Vec<u32>,
}

impl std::str::FromStr for Group {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, pids) = s.split_once('=').ok_or("expected NAME=PID[,PID…]")?;
        let roots = pids
            .split(',')
            .filter(|p| !p.is_empty())
            .map(|p| p.trim().parse::<u32>().map_err(|e| format!("{p}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            name: name.to_string(),
            roots,
        })
    }
}

struct Proc {
    ppid: u32,
    ticks: u64,
}

fn snapshot() -> HashMap<u32, Proc> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name may contain spaces and parentheses: fields
        // start after the last ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // rest[0] is field 3 (state): ppid = field 4, utime..cstime = 14..17.
        let ppid = u32::try_from(num(1)).unwrap_or(0);
        out.insert(
            pid,
            Proc {
                ppid,
                ticks: num(11) + num(12) + num(13) + num(14),
            },
        );
    }
    out
}

fn members(roots: &[u32], procs: &HashMap<u32, Proc>) -> HashSet<u32> {
    let mut set: HashSet<u32> = roots
        .iter()
        .copied()
        .filter(|p| procs.contains_key(p))
        .collect();
    loop {
        let before = set.len();
        for (pid, p) in procs {
            if set.contains(&p.ppid) {
                set.insert(*pid);
            }
        }
        if set.len() == before {
            return set;
        }
    }
}

fn pss_kib(pid: u32) -> u64 {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
        return 0;
    };
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU ticks (1/100 s) of each group now.
#[must_use]
pub fn cpu_ticks(groups: &[Group]) -> Vec<u64> {
    let procs = snapshot();
    groups
        .iter()
        .map(|g| {
            members(&g.roots, &procs)
                .iter()
                .map(|p| procs[p].ticks)
                .sum()
        })
        .collect()
}

/// PSS in KiB of each group now.
#[must_use]
pub fn pss(groups: &[Group]) -> Vec<u64> {
    let procs = snapshot();
    groups
        .iter()
        .map(|g| members(&g.roots, &procs).iter().map(|p| pss_kib(*p)).sum())
        .collect()
}

/// What a phase cost each group.
#[derive(Clone, Debug)]
pub struct Usage {
    pub name: String,
    pub cpu_ms: u64,
    pub pss_before_mib: f64,
    pub pss_peak_mib: f64,
    pub pss_after_mib: f64,
}

/// Samples the groups while a phase runs.
pub struct Sampler {
    groups: Vec<Group>,
    start_ticks: Vec<u64>,
    start_pss: Vec<u64>,
    peak: Arc<Mutex<Vec<u64>>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    /// Starts sampling (a no-op sampler without groups).
    #[must_use]
    pub fn start(groups: &[Group]) -> Self {
        let groups = groups.to_vec();
        let start_ticks = cpu_ticks(&groups);
        let start_pss = pss(&groups);
        let peak = Arc::new(Mutex::new(start_pss.clone()));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = {
            let groups = groups.clone();
            let peak = peak.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stopped.changed() => return,
                        () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                    let g = groups.clone();
                    let now = tokio::task::spawn_blocking(move || pss(&g))
                        .await
                        .unwrap_or_default();
                    if let Ok(mut p) = peak.lock() {
                        for (p, n) in p.iter_mut().zip(now) {
                            *p = (*p).max(n);
                        }
                    }
                }
            })
        };
        Self {
            groups,
            start_ticks,
            start_pss,
            peak,
            stop,
            task,
        }
    }

    /// Stops and reports each group.
    pub async fn finish(self) -> Vec<Usage> {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let end_ticks = cpu_ticks(&self.groups);
        let end_pss = pss(&self.groups);
        let peak = self.peak.lock().map(|p| p.clone()).unwrap_or_default();
        let mib = |k: u64| k as f64 / 1024.0;
        self.groups
            .iter()
            .enumerate()
            .map(|(i, g)| Usage {
                name: g.name.clone(),
                cpu_ms: end_ticks[i].saturating_sub(self.start_ticks[i]) * 10,
                pss_before_mib: mib(self.start_pss[i]),
                pss_peak_mib: mib(peak.get(i).copied().unwrap_or(0).max(end_pss[i])),
                pss_after_mib: mib(end_pss[i]),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_syntax() {
        let g: Group = "server=12,34".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(g.name, "server");
        assert_eq!(g.roots, vec![12, 34]);
        assert!("server".parse::<Group>().is_err());
        assert!("server=x".parse::<Group>().is_err());
    }

    /// This process is its own tree: its PSS is seen, and CPU it burns is
    /// counted.
    #[test]
    fn own_process_is_measured() {
        let me = vec![Group {
            name: "me".into(),
            roots: vec![std::process::id()],
        }];
        assert!(pss(&me)[0] > 0, "no PSS read from /proc");
        let before = cpu_ticks(&me)[0];
        // Burn CPU until a tick (10 ms) is counted; no speed assumed, only
        // a generous bound for a machine that never schedules us.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while cpu_ticks(&me)[0] == before {
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "CPU time not counted"
            );
        }
    }
}
