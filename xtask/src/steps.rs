//! Run a sequence of steps (subprocesses with inherited stdio, or in-process tasks), each under
//! a heading with its duration, stopping at the first failure, with a summary line at the end.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// Test counts read from the libtest summary lines (`test result: ok. N passed; M failed;
/// K ignored; ...`) that the steps print, so the run can end with one total.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TestCounts {
    pub passed: usize,
    pub failed: usize,
    pub ignored: usize,
}

impl TestCounts {
    /// Add the counts of one `test result:` line; other lines leave the counts unchanged.
    pub fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim_start().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<usize>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// How a step ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// Failed with this exit code (1 for in-process failures).
    Failed(i32),
    /// Not applicable here, with the reason.
    Skipped(String),
}

/// A step's work.
pub enum Action {
    /// A command run in the workspace root, its output going straight to ours.
    Run(Command),
    /// Work done in this process.
    Task(Box<dyn FnOnce() -> Result<(), String>>),
    /// Nothing to run, and why.
    Skip(String),
}

pub struct Step {
    pub name: String,
    pub action: Action,
}

impl Step {
    /// `program args...` run in `root`, with `envs` added to the environment.
    pub fn cmd(
        name: &str,
        root: &Path,
        program: &str,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Step {
        let mut c = Command::new(program);
        c.args(args).current_dir(root);
        for (k, v) in envs {
            c.env(k, v);
        }
        Step {
            name: name.to_string(),
            action: Action::Run(c),
        }
    }

    pub fn task(name: &str, f: impl FnOnce() -> Result<(), String> + 'static) -> Step {
        Step {
            name: name.to_string(),
            action: Action::Task(Box::new(f)),
        }
    }

    pub fn skip(name: &str, why: &str) -> Step {
        Step {
            name: name.to_string(),
            action: Action::Skip(why.to_string()),
        }
    }
}

fn describe(c: &Command) -> String {
    let envs: Vec<String> = c
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), v?.to_string_lossy())))
        .collect();
    let args: Vec<String> = c
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut parts = envs;
    parts.push(c.get_program().to_string_lossy().into_owned());
    parts.extend(args);
    parts.join(" ")
}

/// Run `c` with its stdout forwarded line by line to ours (stderr inherited), counting the
/// libtest summary lines it prints.
fn run_counting(
    c: &mut Command,
    counts: &mut TestCounts,
) -> std::io::Result<std::process::ExitStatus> {
    let mut child = c.stdout(Stdio::piped()).spawn()?;
    if let Some(out) = child.stdout.take() {
        let stdout = std::io::stdout();
        for line in BufReader::new(out).lines() {
            let line = line?;
            counts.add_line(&line);
            let mut lock = stdout.lock();
            writeln!(lock, "{line}")?;
            lock.flush()?;
        }
    }
    child.wait()
}

fn run_one(step: Step, counts: &mut TestCounts) -> Outcome {
    match step.action {
        Action::Skip(why) => Outcome::Skipped(why),
        Action::Run(mut c) => {
            println!("$ {}", describe(&c));
            match run_counting(&mut c, counts) {
                Ok(s) if s.success() => Outcome::Passed,
                Ok(s) => Outcome::Failed(s.code().unwrap_or(1)),
                Err(e) => {
                    eprintln!("xtask: cannot run {:?}: {e}", c.get_program());
                    Outcome::Failed(127)
                }
            }
        }
        Action::Task(f) => match f() {
            Ok(()) => Outcome::Passed,
            Err(e) => {
                eprintln!("xtask: {e}");
                Outcome::Failed(1)
            }
        },
    }
}

fn fmt_duration(s: f64) -> String {
    if s >= 60.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, s as u64 % 60)
    } else {
        format!("{s:.1}s")
    }
}

/// Run `steps` in order, stopping at the first failure. Returns the exit code: 0, or the
/// failed step's.
pub fn run_all(title: &str, steps: Vec<Step>) -> i32 {
    let start = Instant::now();
    let total = steps.len();
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    let mut code = 0;
    let mut lines = Vec::new();
    let mut counts = TestCounts::default();
    for (i, step) in steps.into_iter().enumerate() {
        let name = step.name.clone();
        println!("\n==> [{}/{total}] {name}", i + 1);
        let t0 = Instant::now();
        let outcome = run_one(step, &mut counts);
        let took = fmt_duration(t0.elapsed().as_secs_f64());
        let line = match &outcome {
            Outcome::Passed => {
                passed += 1;
                format!("passed   {name} ({took})")
            }
            Outcome::Skipped(why) => {
                skipped += 1;
                format!("skipped  {name}: {why}")
            }
            Outcome::Failed(c) => {
                failed += 1;
                code = *c;
                format!("FAILED   {name} (exit code {c}, {took})")
            }
        };
        println!("<== [{}/{total}] {line}", i + 1);
        lines.push(line);
        if failed > 0 {
            break;
        }
    }
    let not_run = total - passed - failed - skipped;
    println!("\n==> {title} summary");
    for l in &lines {
        println!("    {l}");
    }
    let mut summary = format!("steps {passed} ok, {failed} failed, {skipped} skipped");
    if not_run > 0 {
        summary.push_str(&format!(
            ", {not_run} not run (stopped at the first failure)"
        ));
    }
    println!(
        "{title} finished in {}: {summary}",
        fmt_duration(start.elapsed().as_secs_f64())
    );
    // The closing line: every test the steps ran, from their libtest summaries.
    println!(
        "tests: {} passed, {} failed, {} skipped",
        counts.passed, counts.failed, counts.ignored
    );
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_libtest_summary_lines() {
        let mut c = TestCounts::default();
        c.add_line("test result: ok. 52 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 4.06s");
        c.add_line(
            "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        c.add_line("test foo ... ok");
        c.add_line("running 3 tests");
        assert_eq!(
            c,
            TestCounts {
                passed: 55,
                failed: 2,
                ignored: 1
            }
        );
    }
    use std::cell::Cell;
    use std::rc::Rc;

    fn sh(name: &str, script: &str) -> Step {
        Step::cmd(name, Path::new("."), "sh", &["-c", script], &[])
    }

    #[test]
    fn stops_at_the_first_failure_with_its_exit_code() {
        let ran_after = Rc::new(Cell::new(false));
        let flag = ran_after.clone();
        let steps = vec![
            sh("ok", "exit 0"),
            Step::skip("not here", "nothing to do"),
            sh("fails", "exit 3"),
            Step::task("after", move || {
                flag.set(true);
                Ok(())
            }),
        ];
        assert_eq!(run_all("test", steps), 3);
        assert!(!ran_after.get(), "a step after a failure ran");
    }

    #[test]
    fn passes_environment_and_reports_task_errors() {
        let steps = vec![Step::cmd(
            "env",
            Path::new("."),
            "sh",
            &["-c", "test \"$FLASHNECK_XTASK_TEST\" = yes"],
            &[("FLASHNECK_XTASK_TEST", "yes")],
        )];
        assert_eq!(run_all("test", steps), 0);
        let failing = vec![Step::task("task", || Err("no".into()))];
        assert_eq!(run_all("test", failing), 1);
        let missing = vec![Step::cmd(
            "missing",
            Path::new("."),
            "/nonexistent/program",
            &[],
            &[],
        )];
        assert_eq!(run_all("test", missing), 127);
    }
}
