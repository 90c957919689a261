//! Where the benches put the server's cores and their own client threads (sender, receiver,
//! probes): `--cpus` and `--client-cpus`, and the default when neither is given.
//!
//! A client thread scheduled on an engine core stops that core for a time slice, which is
//! milliseconds of latency that belong to the scheduler, not to the engine. So by default the
//! clients get the first CPU and the server the others (on 2 CPUs: the server on CPU 1, the
//! clients on CPU 0); only a 1-CPU machine, or a server asked to use every CPU, shares.

use std::str::FromStr;

use anyhow::{bail, Result};
use bettong_engine::placement::{parse_cpu_list, set_thread_cpus, CpuList};

/// A CPU list given on the command line (`1`, `2-5`, `0,3`): a newtype so that clap takes it
/// as one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cpus(pub Vec<usize>);

impl FromStr for Cpus {
    type Err = bettong_engine::placement::CpuListError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_cpu_list(s).map(Cpus)
    }
}

/// The CPUs of a bench's server and of its client threads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// One server core pinned to each.
    pub server: Vec<usize>,
    /// The sender, receiver and probe threads may run on any of these.
    pub clients: Vec<usize>,
}

impl Placement {
    /// Chooses the CPUs from the flags: `cpus` (the server's), `client_cpus`, and `cores` (how
    /// many server cores; at most as many as its CPUs). `online` is the machine's CPUs.
    pub fn choose(
        online: &[usize],
        cpus: Option<&[usize]>,
        client_cpus: Option<&[usize]>,
        cores: Option<usize>,
    ) -> Result<Placement> {
        let rest = |taken: &[usize]| -> Vec<usize> {
            online
                .iter()
                .copied()
                .filter(|c| !taken.contains(c))
                .collect()
        };
        let (server, clients) = match (cpus, client_cpus) {
            (Some(s), Some(c)) => (s.to_vec(), c.to_vec()),
            (Some(s), None) => {
                let c = rest(s);
                let c = if c.is_empty() { online.to_vec() } else { c };
                (s.to_vec(), c)
            }
            (None, Some(c)) => {
                let s = rest(c);
                if s.is_empty() {
                    bail!(
                        "--client-cpus {} leaves no CPU for the server (online: {}); give the \
                         server its own with --cpus",
                        CpuList(c),
                        CpuList(online)
                    );
                }
                (s, c.to_vec())
            }
            (None, None) => {
                let wanted = cores.unwrap_or(online.len().saturating_sub(1).max(1));
                if online.len() >= 2 && wanted < online.len() {
                    (online[1..].to_vec(), vec![online[0]])
                } else {
                    (online.to_vec(), online.to_vec())
                }
            }
        };
        let server = match cores {
            Some(n) if n > server.len() => bail!(
                "--cores {n} is more than the {} server CPU(s) {}; give more with --cpus",
                server.len(),
                CpuList(&server)
            ),
            Some(n) => server[..n].to_vec(),
            None => server,
        };
        if server.is_empty() || clients.is_empty() {
            bail!("the server and the clients need at least one CPU each");
        }
        Ok(Placement { server, clients })
    }

    /// True when a client thread may run on a server CPU.
    pub fn shared(&self) -> bool {
        self.clients.iter().any(|c| self.server.contains(c))
    }

    /// "separate" or "shared".
    pub fn kind(&self) -> &'static str {
        if self.shared() {
            "shared"
        } else {
            "separate"
        }
    }

    /// One line saying where everything runs.
    pub fn describe(&self, clients: &str) -> String {
        format!(
            "server on CPU {}; {clients} on CPU {} ({})",
            CpuList(&self.server),
            CpuList(&self.clients),
            if self.shared() {
                "shared with the server"
            } else {
                "separate from the server"
            }
        )
    }

    /// Pins the calling thread to the client CPUs until the guard drops; the threads it starts
    /// meanwhile (sender, receiver, probes) inherit them. The server's cores pin themselves.
    pub fn pin_clients(&self) -> Result<PinGuard> {
        let before = set_thread_cpus(&self.clients)?;
        Ok(PinGuard { before })
    }
}

/// Gives the calling thread its CPUs back when dropped.
#[derive(Debug)]
pub struct PinGuard {
    before: Vec<usize>,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        if let Err(e) = set_thread_cpus(&self.before) {
            tracing::warn!("cannot give the bench thread its CPUs back: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choose(
        online: &[usize],
        cpus: Option<&[usize]>,
        clients: Option<&[usize]>,
        cores: Option<usize>,
    ) -> Result<(Vec<usize>, Vec<usize>)> {
        Placement::choose(online, cpus, clients, cores).map(|p| (p.server, p.clients))
    }

    #[test]
    fn on_two_cpus_the_server_gets_cpu_1_and_the_clients_cpu_0() {
        let p = Placement::choose(&[0, 1], None, None, None).unwrap();
        assert_eq!((p.server.clone(), p.clients.clone()), (vec![1], vec![0]));
        assert!(!p.shared());
        assert_eq!(p.kind(), "separate");
        assert_eq!(
            p.describe("clients"),
            "server on CPU 1; clients on CPU 0 (separate from the server)"
        );
    }

    #[test]
    fn defaults_keep_cpu_0_for_the_clients_and_share_only_when_they_must() {
        assert_eq!(
            choose(&[0, 1, 2, 3], None, None, None).unwrap(),
            (vec![1, 2, 3], vec![0])
        );
        assert_eq!(
            choose(&[0, 1, 2, 3], None, None, Some(2)).unwrap(),
            (vec![1, 2], vec![0])
        );
        // Every CPU for the server: the clients share them.
        assert_eq!(
            choose(&[0, 1], None, None, Some(2)).unwrap(),
            (vec![0, 1], vec![0, 1])
        );
        assert_eq!(choose(&[0], None, None, None).unwrap(), (vec![0], vec![0]));
    }

    #[test]
    fn flags_choose_and_the_other_side_gets_the_rest() {
        assert_eq!(
            choose(&[0, 1, 2, 3], Some(&[2, 3]), None, None).unwrap(),
            (vec![2, 3], vec![0, 1])
        );
        assert_eq!(
            choose(&[0, 1, 2, 3], None, Some(&[3]), None).unwrap(),
            (vec![0, 1, 2], vec![3])
        );
        assert_eq!(
            choose(&[0, 1], Some(&[0, 1]), None, None).unwrap(),
            (vec![0, 1], vec![0, 1])
        );
        assert_eq!(
            choose(&[0, 1], Some(&[1]), Some(&[1]), None).unwrap(),
            (vec![1], vec![1])
        );
    }

    #[test]
    fn impossible_placements_say_why() {
        let e = choose(&[0, 1], None, Some(&[0, 1]), None).unwrap_err();
        assert!(e.to_string().contains("no CPU for the server"), "{e}");
        let e = choose(&[0, 1, 2], Some(&[1]), None, Some(2)).unwrap_err();
        assert!(e.to_string().contains("--cores 2"), "{e}");
    }

    #[test]
    fn cpus_parse_as_one_flag_value() {
        assert_eq!("0,2-3".parse::<Cpus>().unwrap(), Cpus(vec![0, 2, 3]));
        assert!("x".parse::<Cpus>().is_err());
    }
}
