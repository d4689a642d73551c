//! The lines a child process prints, read by a thread of their own and
//! waited for by the test.

use std::{
    io::{BufRead, BufReader},
    sync::{Arc, Condvar, Mutex},
    thread,
    time::{Duration, Instant},
};

/// Lines a child process printed, shared with the thread reading them.
#[derive(Clone, Default)]
pub(crate) struct Lines(Arc<(Mutex<Vec<String>>, Condvar)>);

impl Lines {
    /// Reads `stream` to its end on a thread, keeping each line; `echo`
    /// prints them as they come, behind that prefix.
    pub(crate) fn follow(
        &self,
        stream: impl std::io::Read + Send + 'static,
        echo: Option<&'static str>,
    ) {
        let lines = self.clone();
        thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if let Some(prefix) = echo {
                    println!("{prefix}{line}");
                }
                let (list, changed) = &*lines.0;
                list.lock().expect("lines").push(line);
                changed.notify_all();
            }
        });
    }

    pub(crate) fn snapshot(&self) -> Vec<String> {
        self.0.0.lock().expect("lines").clone()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.0.lock().expect("lines").len()
    }

    /// The index of the first line from `from` on that satisfies `pred`,
    /// waiting up to `timeout` for it.
    pub(crate) fn wait_index(
        &self,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<usize> {
        let deadline = Instant::now() + timeout;
        let (list, changed) = &*self.0;
        let mut guard = list.lock().expect("lines");
        loop {
            if let Some(i) = guard.iter().skip(from).position(|l| pred(l)) {
                return Some(from + i);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            guard = changed.wait_timeout(guard, left).expect("lines").0;
        }
    }

    /// Waits until a line satisfies `pred`; returns it, or None on timeout.
    pub(crate) fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let index = self.wait_index(0, timeout, pred)?;
        self.snapshot().get(index).cloned()
    }
}
