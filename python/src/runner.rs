//! Starting, stopping and joining an application from Python: `start` returns a [`Running`]
//! handle; `run` starts, waits (stopping gracefully on SIGINT/SIGTERM) and returns the report.
//!
//! The plan handed over by `bettong/__init__.py` is a plain dict (see `Application._plan`),
//! read here once, before the engine starts; everything wrong with it is a Python exception
//! that names the field.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::os::fd::{FromRawFd, OwnedFd};

use bettong_engine::{
    Checkpoints, Engine, FileSourceConfig, MemorySource, Offload, SinkConfig, SourceConfig,
    TcpSinkConfig, TcpSourceConfig,
};
use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use bettong::nats::cli::{DEFAULT_IN_PARTITIONS, DEFAULT_PARTITIONS};
use bettong::nats::engine_sink::Layout;
use bettong::nats::standalone::{self, Bridge};
use bettong::observe::{ObserveOptions, Observers};

use crate::item::set_state_codec;
use crate::python_pipeline::{build, KeyFn, PyApp, SourceSteps, Step, Tail};
use crate::relay::relay;
use crate::user_errors::UserErrors;

/// A named callable from the plan: `(callable, name)`.
type Named = (Py<PyAny>, String);

#[derive(FromPyObject)]
struct SourcePlan {
    #[pyo3(item)]
    kind: String,
    #[pyo3(item)]
    addr: Option<String>,
    #[pyo3(item)]
    path: Option<PathBuf>,
    #[pyo3(item)]
    frames: Option<Vec<Vec<u8>>>,
    #[pyo3(item)]
    max_frame: Option<usize>,
    /// A NATS source's `nats://HOST:PORT/PREFIX`.
    #[pyo3(item)]
    url: Option<String>,
    /// A NATS source's input partitions, should its stream have to be created.
    #[pyo3(item)]
    in_partitions: Option<u32>,
    #[pyo3(item)]
    decoder: Option<Named>,
    #[pyo3(item)]
    steps: Vec<(String, Option<Py<PyAny>>, String)>,
    #[pyo3(item)]
    key: Option<Named>,
}

#[derive(FromPyObject)]
pub(crate) struct Plan {
    #[pyo3(item)]
    sources: Vec<SourcePlan>,
    #[pyo3(item)]
    state_class: Named,
    #[pyo3(item)]
    compute: Named,
    #[pyo3(item)]
    codec: Option<(Py<PyAny>, Py<PyAny>)>,
    #[pyo3(item)]
    encoder: Named,
    #[pyo3(item)]
    sink_kind: String,
    /// A TCP sink's `HOST:PORT`, or a NATS sink's `nats://HOST:PORT/PREFIX`.
    #[pyo3(item)]
    sink_addr: Option<String>,
    /// A NATS sink's key partitions.
    #[pyo3(item)]
    sink_partitions: Option<u32>,
    /// Every step is a built-in native one: run the Rust word count itself.
    #[pyo3(item)]
    native: bool,
}

pub(crate) fn err(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(format!("{e:#}"))
}

/// The engine's source for `s`; a NATS source is a channel source of `lanes` lanes (the
/// engine's cores), whose bridge end is added to `nats`.
fn source_config(
    s: &SourcePlan,
    lanes: usize,
    nats: &mut Vec<standalone::BridgeInput>,
) -> PyResult<SourceConfig> {
    Ok(match s.kind.as_str() {
        "tcp" => {
            let spec = s.addr.as_deref().unwrap_or_default();
            let (_name, addr) = bettong::serve::parse_input(spec).map_err(err)?;
            let mut cfg = TcpSourceConfig::new(addr);
            cfg.io = bettong::serve::io_backend_from_env().map_err(err)?;
            if let Some(m) = s.max_frame {
                cfg.max_frame = m;
            }
            SourceConfig::Tcp(cfg)
        }
        "file" => {
            let mut cfg = FileSourceConfig::new(s.path.clone().unwrap_or_default());
            if let Some(m) = s.max_frame {
                cfg.max_frame = m;
            }
            SourceConfig::File(cfg)
        }
        "memory" => SourceConfig::Memory(MemorySource::from_frames(
            s.frames.clone().unwrap_or_default(),
        )),
        "nats" => {
            let url = s.url.as_deref().unwrap_or_default();
            let url = standalone::parse_url(url, "NATSSource's url").map_err(err)?;
            let max_frame = s
                .max_frame
                .unwrap_or(bettong_engine::codec::DEFAULT_MAX_FRAME);
            let in_partitions = s.in_partitions.unwrap_or(DEFAULT_IN_PARTITIONS);
            let (cfg, input) = standalone::nats_source_on(&url, lanes, max_frame, in_partitions);
            nats.push(input);
            cfg
        }
        other => return Err(err(format!("unknown source kind {other:?}"))),
    })
}

/// The engine's sink for `plan`; a NATS sink is a channel sink, with its bridge end.
fn sink_config(plan: &Plan) -> PyResult<(SinkConfig, Option<standalone::BridgeOutput>)> {
    Ok(match plan.sink_kind.as_str() {
        "tcp" => {
            let addr = plan.sink_addr.as_deref().unwrap_or_default();
            let addr = bettong::serve::resolve(addr, "the TCP sink's address").map_err(err)?;
            (SinkConfig::Tcp(TcpSinkConfig::new(addr)), None)
        }
        "memory" => (SinkConfig::Memory, None),
        "nats" => {
            let url = plan.sink_addr.as_deref().unwrap_or_default();
            let url = standalone::parse_url(url, "NATSSink's url").map_err(err)?;
            let partitions = plan.sink_partitions.unwrap_or(DEFAULT_PARTITIONS);
            let (cfg, output) = standalone::nats_channel_sink(&url, partitions, Layout::Lines);
            (SinkConfig::Channel(cfg), Some(output))
        }
        other => return Err(err(format!("unknown sink kind {other:?}"))),
    })
}

pub(crate) fn py_app(py: Python<'_>, plan: &Plan, errors: Arc<UserErrors>) -> PyResult<Arc<PyApp>> {
    let sources = plan
        .sources
        .iter()
        .map(|s| {
            let steps = s
                .steps
                .iter()
                .map(|(kind, f, name)| match (kind.as_str(), f) {
                    ("to", Some(f)) => Ok(Step::To(f.clone_ref(py), name.clone())),
                    ("to_multi", Some(f)) => Ok(Step::ToMulti(f.clone_ref(py), name.clone())),
                    ("native_split", _) => Ok(Step::NativeSplit),
                    _ => Err(err(format!("step {name}: unknown kind {kind:?}"))),
                })
                .collect::<PyResult<_>>()?;
            Ok(SourceSteps {
                decoder: s
                    .decoder
                    .as_ref()
                    .map(|(f, n)| (f.clone_ref(py), n.clone())),
                steps,
                key: match &s.key {
                    Some((f, n)) => KeyFn::Py(f.clone_ref(py), n.clone()),
                    None => KeyFn::Identity,
                },
            })
        })
        .collect::<PyResult<_>>()?;
    let named = |(f, n): &Named| (f.clone_ref(py), n.clone());
    Ok(Arc::new(PyApp {
        sources,
        tail: Tail {
            state_class: named(&plan.state_class),
            compute: named(&plan.compute),
            encoder: named(&plan.encoder),
        },
        errors,
    }))
}

/// A running application.
#[pyclass(module = "bettong._native")]
pub struct Running {
    running: Mutex<Option<bettong_engine::Running>>,
    stop: bettong_engine::StopHandle,
    errors: Arc<UserErrors>,
    local_addr: Option<String>,
    /// The metrics server, if `metrics_addr` was given; stopped by [`Running::join`].
    observers: Mutex<Option<Observers>>,
    metrics_addr: Option<String>,
    cores: usize,
    /// SIGINT/SIGTERM stop this engine ([`stop_on_signals`]).
    on_signals: std::sync::atomic::AtomicBool,
    /// The NATS bridge of the NATS sources and sink, if any: finished by [`Running::join`]
    /// once the engine has stopped.
    bridge: Mutex<Option<Bridge>>,
}

/// Finishes the NATS bridge, if there is one: publishes the output still queued and joins it.
fn finish_bridge(bridge: Option<Bridge>) -> PyResult<()> {
    match bridge.map(Bridge::finish) {
        Some(Err(e)) => Err(PyRuntimeError::new_err(format!(
            "the NATS bridge failed: {e:#}"
        ))),
        _ => Ok(()),
    }
}

#[pymethods]
impl Running {
    /// Asks the engine to stop gracefully: sources stop, what was read is finished and the
    /// sinks are flushed. Returns at once; `join` waits.
    fn stop(&self) {
        self.stop.stop();
    }

    /// The address the TCP source listens on (the real port when 0 was asked), if any.
    #[getter]
    fn local_addr(&self) -> Option<String> {
        self.local_addr.clone()
    }

    /// How many cores the engine runs on.
    /// Where the metrics are served (`/metrics`, `/metrics.json`, the page), if they are.
    #[getter]
    fn metrics_addr(&self) -> Option<String> {
        self.metrics_addr.clone()
    }

    #[getter]
    fn cores(&self) -> usize {
        self.cores
    }

    /// Waits until the engine has finished; returns `(stopped_json, outputs, rejected)`: the
    /// metrics as `bettong serve`'s stopped line, each core's output (memory sinks), and the
    /// records rejected by exceptions in user code. Raises the first exception under
    /// `on_error="stop"`, or the engine's error.
    fn join(&self, py: Python<'_>) -> PyResult<(String, Py<PyList>, u64)> {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("join: this application was already joined"))?;
        let bridge = self.bridge.lock().unwrap_or_else(|e| e.into_inner()).take();
        // The engine has stopped (its sink queue is closed): the bridge publishes the rest.
        let (report, bridged) = py.detach(|| {
            let report = running.join();
            (report, finish_bridge(bridge))
        });
        drop(
            self.observers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        set_state_codec(None);
        if self.on_signals.load(std::sync::atomic::Ordering::Relaxed) {
            // A SIGINT also set Python's own flag; the signal was handled (the graceful stop),
            // so its KeyboardInterrupt is consumed here rather than raised after the return.
            match py.check_signals() {
                Err(e) if e.is_instance_of::<PyKeyboardInterrupt>(py) => {}
                other => other?,
            }
        }
        let report = report
            .map_err(|e| PyRuntimeError::new_err(format!("the Bettong engine failed: {e}")))?;
        bridged?;
        if let Some(e) = self.errors.take_first() {
            return Err(e);
        }
        let outputs = PyList::empty(py);
        for o in &report.outputs {
            outputs.append(PyBytes::new(py, o))?;
        }
        Ok((
            bettong::serve::stopped_line(&report),
            outputs.unbind(),
            self.errors
                .rejected
                .load(std::sync::atomic::Ordering::Relaxed),
        ))
    }
}

/// `on_error`'s meaning: whether the first exception in user code stops the run.
pub(crate) fn stop_on_error(on_error: &str) -> PyResult<bool> {
    match on_error {
        "reject" => Ok(false),
        "stop" => Ok(true),
        other => Err(err(format!(
            "on_error must be \"reject\" or \"stop\", not {other:?}"
        ))),
    }
}

/// Starts the application described by `plan` (see `bettong.Application`) and returns at once,
/// with its sources listening.
#[pyfunction]
///
/// Process mode (`workers`: each core's front worker's socket, and the address the state
/// workers listen on): the engine runs the [relay](crate::relay) pipeline, handing each read
/// to its core's front worker and each routed record to its owner core's state worker; the
/// plan's sink is the state workers'.
#[pyo3(signature = (plan, cores=None, on_error="reject", resilience_dir=None, checkpoint_interval=1.0, metrics_addr=None, workers=None))]
#[allow(clippy::too_many_arguments)]
pub fn start(
    py: Python<'_>,
    plan: &Bound<'_, PyDict>,
    cores: Option<usize>,
    on_error: &str,
    resilience_dir: Option<PathBuf>,
    checkpoint_interval: f64,
    metrics_addr: Option<String>,
    workers: Option<(Vec<i32>, String)>,
) -> PyResult<Running> {
    // First of all, so that every return below closes them (the caller has let them go).
    // SAFETY: the parent made these sockets for the engine and hands each over once, here;
    // from now on they are owned (and closed) by this function or the engine.
    let workers = workers.map(|(fds, addr)| {
        let fds: Vec<OwnedFd> = fds
            .into_iter()
            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
            .collect();
        (fds, addr)
    });
    let plan: Plan = plan.extract()?;
    let stop_on_error = stop_on_error(on_error)?;
    let offload = workers.map(|(fds, relay_sink)| (Offload::new(fds), relay_sink));
    // The engine's cores: one lane of each NATS source each.
    let lanes = match (&offload, cores) {
        (_, Some(n)) => n,
        (Some((offload, _)), None) => offload.cores(),
        (None, None) => bettong_engine::online_cpus().len(),
    };
    let mut nats_inputs = Vec::new();
    let sources = plan
        .sources
        .iter()
        .map(|s| source_config(s, lanes, &mut nats_inputs))
        .collect::<PyResult<Vec<_>>>()?;
    let (mut sink, nats_output) = sink_config(&plan)?;
    if !nats_inputs.is_empty() && resilience_dir.is_some() {
        return Err(err(
            "resilience_dir cannot be used with a NATSSource: its input stream is read from \
             its start at every start, so a restored checkpoint would count it twice",
        ));
    }
    let mut engine = Engine::new();
    if let Some((offload, relay_sink)) = &offload {
        if nats_output.is_some() {
            return Err(err(
                "NATSSink is not supported in process mode (the state workers write the output \
                 themselves, over TCP): run with mode=\"in-process\"",
            ));
        }
        if resilience_dir.is_some() {
            return Err(err(
                "resilience_dir is not supported in process mode yet (the states live in the \
                 worker processes, which do not take part in checkpoints): run with \
                 mode=\"in-process\" to checkpoint",
            ));
        }
        if plan.native {
            return Err(err(
                "the native word count runs no Python: it needs no process mode",
            ));
        }
        sink = SinkConfig::Tcp(TcpSinkConfig::new(
            bettong::serve::resolve(relay_sink, "the state workers' address").map_err(err)?,
        ));
        engine = engine.cores(offload.cores()).offload(offload.clone());
    }
    if let Some(n) = cores {
        if n == 0 {
            return Err(err("cores must be at least 1"));
        }
        engine = engine.cores(n);
    }
    let checkpoints = match resilience_dir {
        Some(dir) => {
            if !(checkpoint_interval > 0.0 && checkpoint_interval < 1e7) {
                return Err(err(
                    "checkpoint_interval must be a positive number of seconds",
                ));
            }
            Some(Checkpoints::new(dir).interval(Duration::from_secs_f64(checkpoint_interval)))
        }
        None => None,
    };
    let errors = Arc::new(UserErrors::new(stop_on_error));
    // The Python pipeline (in-process mode), built before the bridge starts so that nothing
    // after the bridge's start fails before the engine's.
    let pipeline = if offload.is_none() && !plan.native {
        set_state_codec(
            plan.codec
                .as_ref()
                .map(|(e, d)| (e.clone_ref(py), d.clone_ref(py))),
        );
        Some(build(py_app(py, &plan, errors.clone())?))
    } else {
        None
    };
    // Connected, and the streams found or made, before the engine reads or writes them.
    let bridge = if nats_inputs.is_empty() && nats_output.is_none() {
        None
    } else {
        // How long the NATS sink's last output may take to be acknowledged after the stop.
        let grace = match &sink {
            SinkConfig::Channel(cfg) => cfg.shutdown_grace,
            _ => Duration::ZERO,
        };
        match py.detach(|| Bridge::start(nats_inputs, nats_output, grace)) {
            Ok(bridge) => Some(bridge),
            Err(e) => {
                set_state_codec(None);
                return Err(PyRuntimeError::new_err(format!(
                    "the NATS bridge could not start: {e:#}"
                )));
            }
        }
    };
    let started = match pipeline {
        Some(app) => py.detach(|| match checkpoints {
            Some(ck) => engine.start_with_checkpoints(app, sources, sink, ck),
            None => engine.start(app, sources, sink),
        }),
        None if offload.is_some() => {
            let app = relay(plan.sources.len());
            py.detach(|| engine.start(app, sources, sink))
        }
        None => {
            let app = bettong::app::word_count();
            py.detach(|| match checkpoints {
                Some(ck) => engine.start_with_checkpoints(app, sources, sink, ck),
                None => engine.start(app, sources, sink),
            })
        }
    };
    let running = match started {
        Ok(running) => running,
        Err(e) => {
            // The engine never ran: its channels are closed, so the bridge stops at once.
            let _ = py.detach(|| finish_bridge(bridge));
            return Err(PyRuntimeError::new_err(format!(
                "the Bettong engine could not start: {e}"
            )));
        }
    };
    // The metrics server (`metrics_addr`) of `bettong serve --metrics-addr`, on its own threads.
    let observe = ObserveOptions {
        metrics_addr,
        progress_interval: Duration::ZERO,
    };
    let observers = match Observers::start(&observe, running.metrics()) {
        Ok(o) => o,
        Err(e) => {
            running.stop();
            let _ = py.detach(|| {
                let _ = running.join();
                finish_bridge(bridge)
            });
            return Err(err(format!("{e:#}")));
        }
    };
    let stop = running.stop_handle();
    errors.arm(stop.clone());
    Ok(Running {
        metrics_addr: observers.metrics_addr().map(|a| a.to_string()),
        observers: Mutex::new(Some(observers)),
        local_addr: running.local_addr().map(|a| a.to_string()),
        cores: running.cpus().len(),
        running: Mutex::new(Some(running)),
        on_signals: false.into(),
        bridge: Mutex::new(bridge),
        stop,
        errors,
    })
}

/// Makes SIGINT and SIGTERM stop `running` gracefully (a second signal exits at once with
/// status 130), as `bettong serve` does.
#[pyfunction]
pub fn stop_on_signals(running: &Running) -> PyResult<()> {
    bettong::serve::install_signal_handlers().map_err(err)?;
    bettong::serve::stop_on_signal(running.stop.clone());
    running
        .on_signals
        .store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}
