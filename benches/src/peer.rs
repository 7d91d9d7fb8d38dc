//! The PyTorch peer: `peers/torch_peer.py` in a long-lived Python process, asked to set up and
//! time the same case between our own rounds (one JSON line in, one JSON line out).

use crate::cases::Case;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// The peer script, embedded so that the bench runs from any directory.
pub const SCRIPT: &str = include_str!("../peers/torch_peer.py");

/// Ops that have a PyTorch peer.
pub fn has_peer(op: &str) -> bool {
    matches!(
        op,
        "attention_forward"
            | "attention_backward"
            | "grkan_forward"
            | "grkan_backward"
            | "gumbel_softmax_forward"
            | "gumbel_softmax_backward"
    )
}

/// A running peer process.
pub struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// `torch <version> (<python>)`.
    pub description: String,
    /// Whether torch sees a CUDA device.
    pub cuda: bool,
}

/// Pythons to try: `$FLASHNECK_PYTHON`, then `python3`.
fn candidates() -> Vec<String> {
    let mut v = Vec::new();
    if let Ok(p) = std::env::var("FLASHNECK_PYTHON")
        && !p.is_empty()
    {
        v.push(p);
    }
    v.push("python3".into());
    v
}

impl Peer {
    /// Start the first Python that imports torch, with the script written into `dir`
    /// (its stderr goes to `dir/peer.log`). `Err` says why there is no peer.
    pub fn start(dir: &Path) -> Result<Peer, String> {
        let script = dir.join("torch_peer.py");
        std::fs::write(&script, SCRIPT).map_err(|e| format!("cannot write {script:?}: {e}"))?;
        let mut why = Vec::new();
        for python in candidates() {
            let probe = Command::new(&python)
                .args(["-c", "import torch"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            match probe {
                Ok(s) if s.success() => {}
                Ok(_) => {
                    why.push(format!("{python}: cannot import torch"));
                    continue;
                }
                Err(e) => {
                    why.push(format!("{python}: {e}"));
                    continue;
                }
            }
            let log = std::fs::File::create(dir.join("peer.log"))
                .map_err(|e| format!("cannot create peer.log: {e}"))?;
            let mut child = Command::new(&python)
                .arg("-u")
                .arg(&script)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("{python}: {e}"))?;
            let stdin = child.stdin.take().expect("piped stdin");
            let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
            let mut peer = Peer {
                child,
                stdin,
                stdout,
                description: String::new(),
                cuda: false,
            };
            let hello = peer.ask(&json!({"cmd": "hello"}))?;
            peer.description = format!(
                "torch {} ({python})",
                hello["torch"].as_str().unwrap_or("?")
            );
            peer.cuda = hello["cuda"].as_bool().unwrap_or(false);
            return Ok(peer);
        }
        Err(format!(
            "no Python with torch (set FLASHNECK_PYTHON): {}",
            why.join("; ")
        ))
    }

    /// Send one request, read one answer; `{"error": ...}` answers become `Err`.
    fn ask(&mut self, msg: &Value) -> Result<Value, String> {
        writeln!(self.stdin, "{msg}").map_err(|e| format!("peer stdin: {e}"))?;
        self.stdin.flush().map_err(|e| format!("peer stdin: {e}"))?;
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .map_err(|e| format!("peer stdout: {e}"))?;
        if n == 0 {
            return Err("the peer process exited (see peer.log)".into());
        }
        let v: Value =
            serde_json::from_str(&line).map_err(|e| format!("peer answered {line:?}: {e}"))?;
        match v.get("error").and_then(Value::as_str) {
            Some(e) => Err(e.to_string()),
            None => Ok(v),
        }
    }

    /// Build the case's inputs in the peer and run it once; returns what runs and the
    /// warm-up time in seconds.
    pub fn setup(
        &mut self,
        id: &str,
        case: &Case,
        device: &str,
        threads: usize,
    ) -> Result<(String, f64), String> {
        let v = self.ask(&json!({
            "cmd": "setup",
            "id": id,
            "op": case.op,
            "dtype": case.dtype,
            "device": device,
            "threads": threads,
            "problem": case.problem,
        }))?;
        Ok((
            v["name"].as_str().unwrap_or("?").to_string(),
            v["warmup_s"].as_f64().unwrap_or(0.0),
        ))
    }

    /// Time `runs` calls of a set-up case, seconds each.
    pub fn run(&mut self, id: &str, runs: usize) -> Result<Vec<f64>, String> {
        let v = self.ask(&json!({"cmd": "run", "id": id, "runs": runs}))?;
        v["times_s"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .ok_or_else(|| format!("peer answered {v} without times_s"))
    }

    /// Free a case's inputs in the peer.
    pub fn drop_case(&mut self, id: &str) {
        let _ = self.ask(&json!({"cmd": "drop", "id": id}));
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // Closing stdin ends the script's loop; wait so that no zombie is left.
        let _ = writeln!(self.stdin);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
