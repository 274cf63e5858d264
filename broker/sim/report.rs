//! What a run found: each step's pass or fail with its details, printed as it goes (one line
//! per step, the details of a failure indented under it), the closing line, and JUnit XML.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One step's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepResult {
    pub title: String,
    pub ok: bool,
    /// For a failure: expected, what arrived instead, the chain traces.
    pub detail: Vec<String>,
    /// Real time the step took.
    pub seconds: f64,
}

/// One scenario's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioResult {
    pub file: PathBuf,
    pub name: String,
    pub steps: Vec<StepResult>,
    /// A scenario that could not run (a parse error, the daemon did not start).
    pub error: Option<String>,
    /// A scenario not run, and why (external mode cannot give what it needs).
    #[serde(default)]
    pub skipped: Option<String>,
}

impl ScenarioResult {
    pub fn passed(&self) -> usize {
        self.steps.iter().filter(|s| s.ok).count()
    }

    pub fn failed(&self) -> usize {
        self.steps.iter().filter(|s| !s.ok).count() + usize::from(self.error.is_some())
    }
}

/// Write a line on stdout (a closed or full stdout does not stop the run).
pub fn out(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

pub fn print_header(file: &Path, name: &str) {
    out(&format!("scenario {name} ({})", file.display()));
}

pub fn print_step(n: usize, step: &StepResult) {
    let mark = if step.ok { "ok  " } else { "FAIL" };
    out(&format!("  {mark} {n:>3}. {}", step.title));
    for line in &step.detail {
        out(&format!("          {line}"));
    }
}

pub fn print_error(error: &str) {
    out(&format!("  FAIL      {error}"));
}

pub fn print_skip(reason: &str) {
    out(&format!("  skip      {reason}"));
}

/// `N passed, M failed` over every step of every scenario.
pub fn closing_line(results: &[ScenarioResult]) -> String {
    let passed: usize = results.iter().map(ScenarioResult::passed).sum();
    let failed: usize = results.iter().map(ScenarioResult::failed).sum();
    let scenarios = results.len();
    let bad = results.iter().filter(|r| r.failed() > 0).count();
    let skipped = results.iter().filter(|r| r.skipped.is_some()).count();
    let mut line = format!(
        "{passed} passed, {failed} failed ({scenarios} scenario{}, {bad} failing",
        if scenarios == 1 { "" } else { "s" }
    );
    if skipped > 0 {
        line.push_str(&format!(", {skipped} skipped"));
    }
    line.push(')');
    line
}

fn xml(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '&' => "&amp;".to_owned(),
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&apos;".to_owned(),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => " ".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

/// JUnit XML: a test suite per scenario, a test case per step.
pub fn junit(results: &[ScenarioResult]) -> String {
    let mut text = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let tests: usize = results
        .iter()
        .map(|r| r.steps.len() + usize::from(r.error.is_some()) + usize::from(r.skipped.is_some()))
        .sum();
    let failures: usize = results.iter().map(ScenarioResult::failed).sum();
    text.push_str(&format!(
        "<testsuites name=\"mqtter sim\" tests=\"{tests}\" failures=\"{failures}\">\n"
    ));
    for result in results {
        let seconds: f64 = result.steps.iter().map(|s| s.seconds).sum();
        text.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" time=\"{seconds:.3}\" file=\"{}\">\n",
            xml(&result.name),
            result.steps.len()
                + usize::from(result.error.is_some())
                + usize::from(result.skipped.is_some()),
            result.failed(),
            xml(&result.file.display().to_string()),
        ));
        if let Some(error) = &result.error {
            text.push_str(&format!(
                "    <testcase name=\"setup\" classname=\"{}\"><failure message=\"{}\"/></testcase>\n",
                xml(&result.name),
                xml(error)
            ));
        }
        if let Some(reason) = &result.skipped {
            text.push_str(&format!(
                "    <testcase name=\"(not run)\" classname=\"{}\"><skipped message=\"{}\"/></testcase>\n",
                xml(&result.name),
                xml(reason)
            ));
        }
        for (i, step) in result.steps.iter().enumerate() {
            let name = format!("{}. {}", i + 1, step.title);
            text.push_str(&format!(
                "    <testcase name=\"{}\" classname=\"{}\" time=\"{:.3}\"",
                xml(&name),
                xml(&result.name),
                step.seconds
            ));
            if step.ok {
                text.push_str("/>\n");
            } else {
                let first = step.detail.first().cloned().unwrap_or_default();
                text.push_str(&format!(
                    "><failure message=\"{}\">{}</failure></testcase>\n",
                    xml(&first),
                    xml(&step.detail.join("\n"))
                ));
            }
        }
        text.push_str("  </testsuite>\n");
    }
    text.push_str("</testsuites>\n");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junit_escapes_and_counts() {
        let results = vec![ScenarioResult {
            file: "a.sim.yaml".into(),
            name: "a <b>".into(),
            steps: vec![
                StepResult {
                    title: "ok".into(),
                    ok: true,
                    detail: vec![],
                    seconds: 0.1,
                },
                StepResult {
                    title: "bad".into(),
                    ok: false,
                    detail: vec!["expected \"x\" & y".into()],
                    seconds: 0.2,
                },
            ],
            error: None,
            skipped: None,
        }];
        let text = junit(&results);
        assert!(text.contains("tests=\"2\" failures=\"1\""));
        assert!(text.contains("a &lt;b&gt;"));
        assert!(text.contains("expected &quot;x&quot; &amp; y"));
        assert_eq!(
            closing_line(&results),
            "1 passed, 1 failed (1 scenario, 1 failing)"
        );
    }
}
