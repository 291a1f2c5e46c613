//! The load generator's progress output into a file or a pipe: whole lines, one per
//! update, never a pile of carriage returns on one line.

use std::process::Command;

#[test]
fn progress_into_a_pipe_is_one_line_per_update() {
    let output = Command::new(env!("CARGO_BIN_EXE_yellowstone-loadgen"))
        .args([
            "--duration",
            "6",
            "--rate",
            "50",
            "--users",
            "2",
            "--providers",
            "2",
            "--durability",
            "none",
        ])
        .output()
        .expect("run the load generator");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains('\r'), "no carriage return: {stderr:?}");
    let updates: Vec<&str> = stderr.lines().filter(|l| l.contains("rfcs")).collect();
    assert!(!updates.is_empty(), "progress lines: {stderr:?}");
    assert!(
        updates.iter().all(|l| l.matches("rfcs").count() == 1),
        "one update per line: {updates:?}"
    );
}
