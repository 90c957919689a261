//! Which CPUs things run on: the CPU-list syntax of `--cpus` and `--client-cpus` (`1`, `2-5`,
//! `0,3`, `0-1,4`, as in `taskset -c` and `/sys/devices/system/cpu/online`), the CPUs this
//! machine has online, and pinning the calling thread to a set of CPUs.
//!
//! The engine pins each of its cores to one CPU itself ([`Engine::cpus`](crate::Engine::cpus));
//! this module is for choosing those CPUs and for placing everything else (a bench's client
//! threads) away from them, so that an engine core is never preempted by its own load.

use std::fmt;

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// The largest CPU number a list may name (the kernel's `CpuSet` holds 1024).
pub const MAX_CPU: usize = 1023;

/// Why a CPU list could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad CPU list {list:?}: {why} (expected CPU numbers and ranges such as `1`, `2-5`, `0,3`)")]
pub struct CpuListError {
    /// The list as given.
    pub list: String,
    /// What is wrong with it.
    pub why: String,
}

/// Parses a CPU list: comma-separated CPU numbers and inclusive ranges `A-B`. The result is
/// sorted, without repeats, and never empty.
///
/// ```
/// use bettong_engine::placement::parse_cpu_list;
/// assert_eq!(parse_cpu_list("1").unwrap(), [1]);
/// assert_eq!(parse_cpu_list("2-5").unwrap(), [2, 3, 4, 5]);
/// assert_eq!(parse_cpu_list("3,0, 3").unwrap(), [0, 3]);
/// assert!(parse_cpu_list("5-2").is_err());
/// assert!(parse_cpu_list("").is_err());
/// ```
pub fn parse_cpu_list(list: &str) -> Result<Vec<usize>, CpuListError> {
    let err = |why: String| CpuListError {
        list: list.to_string(),
        why,
    };
    let number = |s: &str| -> Result<usize, CpuListError> {
        let s = s.trim();
        let n: usize = s
            .parse()
            .map_err(|_| err(format!("{s:?} is not a CPU number")))?;
        if n > MAX_CPU {
            return Err(err(format!("CPU {n} is above the largest, {MAX_CPU}")));
        }
        Ok(n)
    };
    let mut cpus = Vec::new();
    for part in list.trim().split(',') {
        if part.trim().is_empty() {
            return Err(err("an empty entry".into()));
        }
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (number(a)?, number(b)?);
                if a > b {
                    return Err(err(format!("the range {a}-{b} runs backwards")));
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(number(part)?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Formats CPUs as the shortest CPU list (`0-3,6`), the inverse of [`parse_cpu_list`].
pub struct CpuList<'a>(pub &'a [usize]);

impl fmt::Display for CpuList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sorted = self.0.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut i = 0;
        while i < sorted.len() {
            let mut j = i;
            while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
                j += 1;
            }
            if i > 0 {
                f.write_str(",")?;
            }
            match j - i {
                0 => write!(f, "{}", sorted[i])?,
                _ => write!(f, "{}-{}", sorted[i], sorted[j])?,
            }
            i = j + 1;
        }
        Ok(())
    }
}

/// The CPUs this machine has online (`/sys/devices/system/cpu/online`), whatever the calling
/// thread's own affinity; the CPUs the calling thread may use if that file cannot be read.
pub fn system_cpus() -> Vec<usize> {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| parse_cpu_list(&s).ok())
        .unwrap_or_else(crate::online_cpus)
}

/// Refuses `cpus` when one of them is not online ([`system_cpus`]), naming the first such CPU
/// and the CPUs that are ([`crate::Error::CpuOffline`]).
pub fn require_online(cpus: &[usize]) -> Result<(), crate::Error> {
    let online = system_cpus();
    match cpus.iter().find(|c| !online.contains(c)) {
        Some(&cpu) => Err(crate::Error::CpuOffline { cpu, online }),
        None => Ok(()),
    }
}

/// Pins the calling thread to `cpus` (threads it starts afterwards inherit the set); returns
/// the set it had before, to give back with [`set_thread_cpus`] again.
pub fn set_thread_cpus(cpus: &[usize]) -> std::io::Result<Vec<usize>> {
    let before = thread_cpus()?;
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("CPU {c} does not fit in a CPU set: {e}"),
            )
        })?;
    }
    sched_setaffinity(Pid::from_raw(0), &set).map_err(|e| {
        std::io::Error::other(format!(
            "cannot pin this thread to CPUs {}: {e} (are they online and allowed for this \
             process?)",
            CpuList(cpus)
        ))
    })?;
    Ok(before)
}

/// The CPUs the calling thread may run on.
pub fn thread_cpus() -> std::io::Result<Vec<usize>> {
    let set = sched_getaffinity(Pid::from_raw(0)).map_err(std::io::Error::from)?;
    Ok((0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_ranges_and_repeats() {
        assert_eq!(parse_cpu_list("0,3").unwrap(), [0, 3]);
        assert_eq!(parse_cpu_list("0-1,4").unwrap(), [0, 1, 4]);
        assert_eq!(parse_cpu_list(" 2-3 ,2\n").unwrap(), [2, 3]);
        assert_eq!(parse_cpu_list("7-7").unwrap(), [7]);
    }

    #[test]
    fn bad_lists_say_what_is_wrong() {
        for (list, why) in [
            ("", "empty entry"),
            ("1,", "empty entry"),
            ("a", "not a CPU number"),
            ("1-", "not a CPU number"),
            ("-1", "not a CPU number"),
            ("4-2", "backwards"),
            ("1024", "above the largest"),
        ] {
            let e = parse_cpu_list(list).unwrap_err();
            assert!(e.to_string().contains(why), "{list:?}: {e}");
        }
    }

    #[test]
    fn formatting_is_the_inverse_of_parsing() {
        for list in ["0", "0-3", "0,2", "0-1,4-6,9"] {
            let cpus = parse_cpu_list(list).unwrap();
            assert_eq!(CpuList(&cpus).to_string(), list);
        }
    }

    #[test]
    fn a_thread_can_be_pinned_and_given_back_its_cpus() {
        std::thread::spawn(|| {
            let all = thread_cpus().unwrap();
            let first = all[0];
            let before = set_thread_cpus(&[first]).unwrap();
            assert_eq!(before, all);
            assert_eq!(thread_cpus().unwrap(), [first]);
            set_thread_cpus(&before).unwrap();
            assert_eq!(thread_cpus().unwrap(), all);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_system_has_the_cpus_this_thread_may_use() {
        let system = system_cpus();
        for c in thread_cpus().unwrap() {
            assert!(system.contains(&c), "{c} not in {system:?}");
        }
    }
}
