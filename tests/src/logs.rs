//! Every log line of a test binary, at debug level, for tests that check no
//! secret reaches a log line.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

/// Installs (once per test binary) a global JSON subscriber at debug level
/// that writes into a buffer, and returns the buffer.
pub fn captured() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_ansi(false)
            .json()
            .with_writer(move || Capture(sink.clone()))
            .finish();
        #[allow(clippy::expect_used)]
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        buffer
    })
    .clone()
}

/// What was logged so far, as text (log lines are UTF-8).
pub fn text(logs: &Mutex<Vec<u8>>) -> String {
    let bytes = logs.lock().unwrap_or_else(|p| p.into_inner()).clone();
    #[allow(clippy::expect_used)]
    String::from_utf8(bytes).expect("utf8 logs")
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
