//! The JSON log drain: slog → level filter → slog-async channel → slog-json → a buffered
//! writer that a small thread flushes every 200 ms and that is flushed again at exit.
//!
//! Why not plain stderr: on this stack, one unbuffered JSON write per request costs about as
//! much CPU as proxying the request. Here the request path only serialises its fields into the
//! async channel; formatting and writing happen on the logging thread, in batches. When the
//! channel is full a line is dropped rather than stalling a request, and every dropped line is
//! counted in `courier_log_lines_dropped_total`.
//!
//! Lines carry the spec's fields: `timestamp` (RFC 3339 UTC), `level`, `event` (the message),
//! then the record's own key-values.

use std::io::{self, BufWriter, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use prometheus::IntCounter;
use slog::{o, Drain, FnValue, Logger, OwnedKVList, PushFnValue, Record};

const FLUSH_EVERY: Duration = Duration::from_millis(200);
const CHANNEL_LINES: usize = 16 * 1024;

/// Where log lines go.
#[derive(Clone)]
pub enum LogTarget {
    /// The process's standard error.
    Stderr,
    /// An in-memory buffer (tests read it back).
    Capture(LogCapture),
}

/// Log lines captured in memory.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("capture lock")).into_owned()
    }

    /// Every line written so far, parsed as JSON (lines that are not JSON are skipped).
    pub fn lines(&self) -> Vec<serde_json::Value> {
        self.text().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }
}

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("capture lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The buffered writer shared by the logging thread and the flusher.
#[derive(Clone)]
struct SharedWriter(Arc<Mutex<BufWriter<Box<dyn Write + Send>>>>);

impl Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().map_err(|_| io::Error::other("log writer poisoned"))?.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.lock().map_err(|_| io::Error::other("log writer poisoned"))?.flush()
    }
}

/// Counts lines the async channel could not take, instead of blocking the caller.
struct CountDropped {
    inner: slog_async::AsyncCore,
    dropped: IntCounter,
}

impl Drain for CountDropped {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        if self.inner.log(record, values).is_err() {
            self.dropped.inc();
        }
        Ok(())
    }
}

/// The running log pipeline. Dropping it writes out every line logged before.
pub struct Logging {
    /// The root logger; actors and handlers take children of it.
    pub logger: Logger,
    guard: Option<slog_async::AsyncGuard>,
    writer: SharedWriter,
    stop: Arc<AtomicBool>,
    flusher: Option<thread::JoinHandle<()>>,
}

impl Logging {
    /// Starts the pipeline at `level`, writing to `target`, counting drops in `dropped`.
    pub fn start(level: slog::Level, target: LogTarget, dropped: IntCounter) -> Logging {
        let sink: Box<dyn Write + Send> = match target {
            LogTarget::Stderr => Box::new(io::stderr()),
            LogTarget::Capture(capture) => Box::new(capture),
        };
        let writer = SharedWriter(Arc::new(Mutex::new(BufWriter::with_capacity(64 * 1024, sink))));
        let json = slog_json::Json::new(writer.clone())
            .set_newlines(true)
            .add_key_value(o!(
                "timestamp" => FnValue(|_: &Record<'_>| {
                    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
                }),
                "level" => FnValue(|r: &Record<'_>| level_name(r.level())),
                "event" => PushFnValue(|r: &Record<'_>, ser| ser.emit(r.msg())),
            ))
            .build()
            .ignore_res();
        let (core, guard) = slog_async::AsyncCore::custom(json)
            .chan_size(CHANNEL_LINES)
            .blocking(false)
            .thread_name("courier-log".into())
            .build_with_guard();
        let drain = CountDropped { inner: core, dropped };
        let drain = slog::LevelFilter::new(drain, level).ignore_res();
        let logger = Logger::root(drain, o!());

        let stop = Arc::new(AtomicBool::new(false));
        let flusher = {
            let (stop, mut writer) = (stop.clone(), writer.clone());
            thread::Builder::new()
                .name("courier-log-flush".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        thread::park_timeout(FLUSH_EVERY);
                        let _ = writer.flush();
                    }
                })
                .expect("spawn log flusher")
        };
        Logging { logger, guard: Some(guard), writer, stop, flusher: Some(flusher) }
    }
}

impl Drop for Logging {
    fn drop(&mut self) {
        // The guard's drop waits for the logging thread to write every queued line.
        drop(self.guard.take());
        self.stop.store(true, Ordering::Relaxed);
        if let Some(flusher) = self.flusher.take() {
            flusher.thread().unpark();
            let _ = flusher.join();
        }
        let _ = self.writer.flush();
    }
}

fn level_name(level: slog::Level) -> &'static str {
    match level {
        slog::Level::Critical => "CRITICAL",
        slog::Level::Error => "ERROR",
        slog::Level::Warning => "WARNING",
        slog::Level::Info => "INFO",
        slog::Level::Debug => "DEBUG",
        slog::Level::Trace => "TRACE",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slog::info;

    #[test]
    fn lines_are_json_with_the_spec_fields_and_respect_the_level() {
        let capture = LogCapture::default();
        let dropped = IntCounter::new("d", "d").unwrap();
        let logging = Logging::start(slog::Level::Info, LogTarget::Capture(capture.clone()), dropped);
        info!(logging.logger, "external_api_request"; "request_id" => "req_1", "status_code" => 200u16);
        slog::debug!(logging.logger, "too_detailed");
        drop(logging);
        let lines = capture.lines();
        assert_eq!(lines.len(), 1, "{}", capture.text());
        let line = &lines[0];
        assert_eq!(line["event"], "external_api_request");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["request_id"], "req_1");
        assert_eq!(line["status_code"], 200);
        let ts = line["timestamp"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(ts).is_ok(), "{ts}");
    }
}
