//! The newcomer path: the README's async example, callback included, run as written with `curl`
//! against a real `courier demo` process (its addresses moved to free ports). It must answer
//! 202, reach `completed`, deliver its callback, and the simulator's sink must have verified
//! the callback's signature.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::process::{lines_of, signal, wait_exit, wait_line, BIN};

/// The demo's default addresses, as the README writes them.
const GATEWAY: &str = "127.0.0.1:8080";
const SIMULATOR: &str = "127.0.0.1:8081";

/// A `courier demo` child, stopped when the test ends however it ends.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every shell command (with its `\` continuations joined) of the fenced block in README.md or
/// docs/*.md that shows the async example with the simulator's callback sink.
fn readme_async_example() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    if let Ok(docs) = std::fs::read_dir(root.join("docs")) {
        files.extend(docs.map_while(Result::ok).map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "md")));
    }
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for block in fenced_blocks(&text) {
            if block.contains("\"async\": true") && block.contains("/_sim/callbacks") {
                let joined = block.replace("\\\n", " ");
                return joined
                    .lines()
                    .map(str::trim)
                    .filter(|l| l.starts_with("curl "))
                    .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                    .collect();
            }
        }
    }
    panic!("no async example with the callback sink in README.md or docs/");
}

/// The contents of the fenced blocks of a Markdown text: from a line opening a fence to the
/// line closing it (an inline run of backticks in prose opens nothing).
fn fenced_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut open: Option<String> = None;
    for line in text.lines() {
        match &mut open {
            None if line.trim_start().starts_with("```") => open = Some(String::new()),
            None => {}
            Some(_) if line.trim() == "```" => blocks.extend(open.take()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    blocks
}

/// Runs one command as a user's shell would, in a clean environment (no proxy settings).
fn run(command: &str) -> String {
    let output = Command::new("bash")
        .args(["-c", command])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stderr(Stdio::inherit())
        .output()
        .expect("bash runs");
    assert!(output.status.success(), "{command} failed: {:?}", output.status);
    String::from_utf8(output.stdout).unwrap()
}

/// The last line of an answer: its JSON body (after any headers `curl -i` printed).
fn body(output: &str) -> Value {
    let last = output.trim_end().lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {output}"))
}

/// Runs `command` until `done` says its answer is final (bounded), returning that answer.
fn poll(command: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = body(&run(command));
        if done(&answer) {
            return answer;
        }
        assert!(Instant::now() < deadline, "{command} never got there; last answer: {answer}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_readme_async_example_works_as_written_in_the_demo() {
    let example = readme_async_example();
    assert_eq!(example.len(), 3, "submit, status, sink: {example:?}");

    let mut child = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--sim-listen", "127.0.0.1:0"])
        .env_clear()
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = lines_of(child.stdout.take().unwrap());
    let mut demo = Demo(child);
    let mut banner = Vec::new();
    let addr = |prefix: &str, suffix: &str, banner: &mut Vec<String>| {
        wait_line(&out, |line| {
            banner.push(line.to_owned());
            let url = line.trim().strip_prefix(prefix)?.split_whitespace().next()?;
            url.strip_prefix("http://")?.strip_suffix(suffix).map(str::to_owned)
        })
    };
    let gateway = addr("gateway:", "/api/external/process", &mut banner);
    let simulator = addr("simulator:", "/v2", &mut banner);
    let last = format!("curl -s http://{simulator}/_sim/callbacks");
    wait_line(&out, |line| {
        banner.push(line.trim().to_owned());
        (line.trim() == last).then_some(())
    });
    let banner = banner.join("\n");
    assert!(banner.contains("COURIER_CALLBACK_SECRET=demo-callback-secret"), "the demo names its secret:\n{banner}");

    let commands: Vec<String> =
        example.iter().map(|c| c.replace(GATEWAY, &gateway).replace(SIMULATOR, &simulator)).collect();
    for command in &commands {
        let printed = banner.lines().any(|l| l.split_whitespace().collect::<Vec<_>>().join(" ") == *command);
        assert!(printed, "the demo prints the README's command {command}\n{banner}");
    }

    let accepted = run(&commands[0]);
    assert!(accepted.starts_with("HTTP/1.1 202 Accepted"), "{accepted}");
    let accepted = body(&accepted);
    assert_eq!(accepted["status"], "pending", "{accepted}");
    let id = accepted["request_id"].as_str().unwrap().to_owned();
    assert!(commands[1].ends_with(&format!("/api/external/status/{id}")), "{commands:?} look up {id}");

    let status = poll(&commands[1], |s| s["status"] == "completed" && s["callback"]["state"] == "delivered");
    assert_eq!(status["result"]["processed_data"], "LATER", "{status}");
    assert_eq!(status["callback"]["last_status_code"], 200, "{status}");

    let sink = poll(&commands[2], |s| s["callbacks"].as_array().is_some_and(|c| !c.is_empty()));
    let callbacks = sink["callbacks"].as_array().unwrap();
    assert_eq!(callbacks.len(), 1, "one callback: {sink}");
    let callback = &callbacks[0];
    assert_eq!((&callback["request_id"], &callback["status"]), (&Value::from(id), &Value::from("completed")));
    assert_eq!(callback["verified"], true, "the sink verified the signature: {callback}");
    assert_eq!(callback["body"]["result"], status["result"], "the callback carries the status document");

    signal(&demo.0, libc::SIGINT);
    assert_eq!(wait_exit(&mut demo.0).code(), Some(0));
}
