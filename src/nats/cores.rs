//! A member's cores (`--cores N`): N threads, each pinned to its own CPU and running a
//! current-thread tokio runtime with its own NATS connection, so that every partition task the
//! member owns runs on exactly one core, from its take to its release, and its messages go
//! through the connection of that core. This file exists to keep that thread-per-core plumbing
//! (CPU choice, pinning, starting and stopping the runtimes) out of the member's control loop.

use std::future::Future;
use std::sync::{mpsc, Arc};

use anyhow::{bail, Context as _};
use bettong_engine::placement::{require_online, set_thread_cpus, CpuList};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The CPUs of a member's `n` cores: the first `n` of `cpus` (`--cpus`), each core pinned to
/// its own; without `--cpus`, `n` unpinned cores (`None`): several members may share a machine,
/// and pinning each to the first CPUs would put all their cores on the same ones.
pub fn choose_cpus(n: usize, cpus: Option<&[usize]>) -> anyhow::Result<Vec<Option<usize>>> {
    if n == 0 {
        bail!("--cores must be at least 1");
    }
    let Some(cpus) = cpus else {
        return Ok(vec![None; n]);
    };
    require_online(cpus).context("--cpus")?;
    if n > cpus.len() {
        bail!(
            "--cores {n} is more than the {} CPU(s) {} given with --cpus, one for each core",
            cpus.len(),
            CpuList(cpus)
        );
    }
    Ok(cpus[..n].iter().copied().map(Some).collect())
}

/// How a member's cores are placed, for its log line: `CPUs 0,1` or `unpinned`.
pub fn describe(cpus: &[Option<usize>]) -> String {
    let pinned: Vec<usize> = cpus.iter().flatten().copied().collect();
    if pinned.is_empty() {
        "unpinned (no --cpus)".to_string()
    } else {
        format!("on CPUs {}", CpuList(&pinned))
    }
}

/// One started core: where to spawn onto it, and what it built on its own thread.
pub struct Core<T> {
    /// Its index, `0..N`.
    pub index: u32,
    /// The CPU it is pinned to (`--cpus`), if any.
    pub cpu: Option<usize>,
    /// Its runtime.
    pub handle: tokio::runtime::Handle,
    /// What `init` built on it (for a member: its context, with its own NATS connection).
    pub local: Arc<T>,
}

impl<T> Core<T> {
    /// Runs `task` on this core until it ends.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }
}

/// The running cores. Dropping it stops them: each runtime drops the tasks still on it.
pub struct Cores<T> {
    /// The cores, by index.
    pub cores: Vec<Core<T>>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl<T: Send + Sync + 'static> Cores<T> {
    /// Starts one core per entry of `cpus`: a thread `bettong-core-C`, pinned to the entry's CPU
    /// if it names one, running a
    /// current-thread runtime (timers and IO enabled) on which `init(C)` builds the core's
    /// `local` before anything is spawned there. Fails, stopping the cores already started, if
    /// a thread cannot be pinned or `init` fails.
    pub fn start<F, Fut>(cpus: &[Option<usize>], init: F) -> anyhow::Result<Cores<T>>
    where
        F: Fn(u32) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        let init = Arc::new(init);
        let mut started = Cores {
            cores: Vec::new(),
            stops: Vec::new(),
            threads: Vec::new(),
        };
        for (index, &cpu) in cpus.iter().enumerate() {
            let index = index as u32;
            let (ready_tx, ready_rx) = mpsc::channel();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let init = init.clone();
            let thread = std::thread::Builder::new()
                .name(format!("bettong-core-{index}"))
                .spawn(move || {
                    let pinned = match cpu {
                        Some(cpu) => set_thread_cpus(&[cpu])
                            .map(|_| ())
                            .map_err(anyhow::Error::from),
                        None => Ok(()),
                    };
                    let built = pinned
                        .and_then(|_| {
                            tokio::runtime::Builder::new_current_thread()
                                .enable_all()
                                .build()
                                .context("cannot start a core's runtime")
                        })
                        .and_then(|rt| {
                            let local = rt.block_on(init(index))?;
                            Ok((rt, Arc::new(local)))
                        });
                    let rt = match built {
                        Ok((rt, local)) => {
                            let _ = ready_tx.send(Ok((rt.handle().clone(), local)));
                            rt
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    // The core's tasks run while this waits; dropping `rt` afterwards drops
                    // the tasks still on it.
                    rt.block_on(async {
                        let _ = stop_rx.await;
                    });
                })
                .context("cannot start a core's thread")?;
            started.threads.push(thread);
            started.stops.push(stop_tx);
            let (handle, local) = ready_rx
                .recv()
                .context("a core's thread ended while starting")?
                .with_context(|| format!("core {index} ({}) did not start", describe(&[cpu])))?;
            started.cores.push(Core {
                index,
                cpu,
                handle,
                local,
            });
        }
        Ok(started)
    }
}

impl<T> Drop for Cores<T> {
    fn drop(&mut self) {
        self.stops.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The core with the fewest of `loads` (partitions of the kind being placed, per core), the
/// lowest index on a tie: so input and key partitions each spread evenly over the cores.
pub fn least_loaded(loads: &[usize]) -> u32 {
    loads
        .iter()
        .enumerate()
        .min_by_key(|&(i, &n)| (n, i))
        .map_or(0, |(i, _)| i as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_loaded_core_wins_and_ties_go_to_the_lowest() {
        assert_eq!(least_loaded(&[0, 0]), 0);
        assert_eq!(least_loaded(&[1, 0]), 1);
        assert_eq!(least_loaded(&[2, 3, 2]), 0);
        assert_eq!(least_loaded(&[]), 0);
    }

    #[test]
    fn cores_run_on_their_own_pinned_cpu_with_timers() {
        let first = bettong_engine::online_cpus()[..1].to_vec();
        let cpus = choose_cpus(1, Some(&first)).unwrap();
        assert_eq!(cpus, [Some(first[0])]);
        let cores = Cores::start(&cpus, |i| async move { Ok(i * 10) }).unwrap();
        let core = &cores.cores[0];
        assert_eq!(*core.local, 0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (name, pinned) = rt
            .block_on(core.spawn(async {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                (
                    std::thread::current().name().map(String::from),
                    bettong_engine::placement::thread_cpus().unwrap(),
                )
            }))
            .unwrap();
        assert_eq!(name.as_deref(), Some("bettong-core-0"));
        assert_eq!(pinned, first);
    }

    #[test]
    fn without_cpus_the_cores_are_not_pinned() {
        let cpus = choose_cpus(2, None).unwrap();
        assert_eq!(cpus, [None, None]);
        let allowed = bettong_engine::placement::thread_cpus().unwrap();
        let cores = Cores::start(&cpus, |_| async move { Ok(()) }).unwrap();
        for core in &cores.cores {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let on = rt
                .block_on(core.spawn(async { bettong_engine::placement::thread_cpus().unwrap() }))
                .unwrap();
            assert_eq!(on, allowed, "core {} keeps the process's CPUs", core.index);
        }
        assert_eq!(describe(&cpus), "unpinned (no --cpus)");
    }

    #[test]
    fn too_many_cores_say_so() {
        let online = bettong_engine::online_cpus();
        let e = choose_cpus(online.len() + 1, Some(&online)).unwrap_err();
        assert!(e.to_string().contains("--cores"), "{e}");
        assert!(choose_cpus(0, None).is_err());
        let e = format!("{:#}", choose_cpus(1, Some(&[100_000])).unwrap_err());
        assert!(
            e.contains("--cpus") && e.contains("CPU 100000 is not online"),
            "{e}"
        );
    }
}
