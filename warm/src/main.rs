//! `headroom-warm`: the tiny static helper that makes any image "runnable" for image warming.
//!
//! An init container of Headroom's own image runs `headroom-warm copy <dest>` to copy this
//! binary into an `emptyDir`; the workload's images then run it from there, so a pull is all
//! the workload image has to survive (no shell, no libc needed: distroless works).
//!
//! - `copy <dest>`: copies this executable to `<dest>` (mode 0755), then exits 0;
//! - `exit`: exits 0 at once (pre-pull pods: the container started, so its image was pulled);
//! - `sleep`: sleeps until killed (placeholders). std alone cannot install a SIGTERM handler,
//!   and a container's PID 1 ignores signals it has no handler for, so the pods that run it
//!   set `terminationGracePeriodSeconds: 0`: the kubelet sends SIGKILL at once.
//!
//! Std only, so it links statically:
//! `RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --locked --target x86_64-unknown-linux-gnu -p headroom-warm`
//! (it has no dependencies, so this builds nothing else) and copy
//! `target/x86_64-unknown-linux-gnu/release/headroom-warm` into the provisioner's image.

use std::process::ExitCode;

const USAGE: &str = "usage: headroom-warm copy <dest> | exit | sleep";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["copy", dest] => match copy_self(dest) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("headroom-warm: cannot copy to {dest}: {e}");
                ExitCode::FAILURE
            }
        },
        ["exit"] => ExitCode::SUCCESS,
        ["sleep"] => loop {
            std::thread::park();
        },
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(64)
        }
    }
}

fn copy_self(dest: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let me = std::env::current_exe()?;
    // Written beside and renamed, so a reader never runs a half-written file.
    let partial = format!("{dest}.partial");
    std::fs::copy(&me, &partial)?;
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&partial, dest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn copy_writes_an_executable_copy_of_itself_and_no_partial_file() {
        let dir = std::env::temp_dir().join(format!("headroom-warm-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dest = dir.join("headroom-warm");
        copy_self(dest.to_str().unwrap()).unwrap();
        let me = std::fs::metadata(std::env::current_exe().unwrap()).unwrap();
        let copy = std::fs::metadata(&dest).unwrap();
        assert_eq!(copy.len(), me.len());
        assert_eq!(copy.permissions().mode() & 0o777, 0o755);
        assert!(!dir.join("headroom-warm.partial").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn copy_to_a_missing_directory_is_an_error() {
        assert!(copy_self("/nonexistent-headroom-dir/x").is_err());
    }
}
