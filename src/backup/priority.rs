//! The archive's CPU priority while it overlaps the downtime. While the services are down the
//! capture and the restart are the downtime, so the archive's threads take only CPU nobody
//! else wants (`SCHED_IDLE`); once the services run again they come first, and the archive
//! goes on 10 nice levels below the process (a user's own `nice` is kept). Linux sets these
//! per thread, and threads inherit them from the thread that starts them. Advice only: a
//! failure changes nothing but the speed.

/// How far below the process the archive runs once the services are up.
pub const ARCHIVE_NICE: i32 = 10;

/// On the archive's thread, before it starts any other: steps back for the downtime. Where
/// this process could not leave `SCHED_IDLE` again (an unprivileged user whose `RLIMIT_NICE`
/// forbids it), it steps back by [`ARCHIVE_NICE`] at once instead.
pub fn while_down() {
    if idle_is_reversible() && set_idle(0) {
        return;
    }
    set_nice(0, archive_nice());
}

/// Once the services run again: every thread of this process in `SCHED_IDLE` (the archive's)
/// goes back to normal scheduling, [`ARCHIVE_NICE`] below the process. Threads those start
/// afterwards inherit that.
pub fn services_up() {
    let nice = archive_nice();
    // A thread starting one while the list is read may be missed once: a few passes.
    for _ in 0..3 {
        let idle: Vec<i32> = threads().into_iter().filter(|t| is_idle(*t)).collect();
        if idle.is_empty() {
            return;
        }
        for tid in idle {
            if set_normal(tid) {
                set_nice(tid, nice);
            }
        }
    }
}

fn archive_nice() -> i32 {
    let base = rustix::process::getpriority_process(None).unwrap_or(0);
    (base + ARCHIVE_NICE).min(19)
}

/// Whether a thread may go from `SCHED_IDLE` back to normal here: tried on a thread of its
/// own, the kernel's rules being the judge.
fn idle_is_reversible() -> bool {
    std::thread::spawn(|| set_idle(0) && set_normal(0))
        .join()
        .unwrap_or(false)
}

/// This process's threads (their ids).
fn threads() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

fn is_idle(tid: i32) -> bool {
    // SAFETY: reads a thread's policy; a gone thread gives -1.
    unsafe { libc::sched_getscheduler(tid) == libc::SCHED_IDLE }
}

fn set_idle(tid: i32) -> bool {
    set_policy(tid, libc::SCHED_IDLE)
}

fn set_normal(tid: i32) -> bool {
    set_policy(tid, libc::SCHED_OTHER)
}

fn set_policy(tid: i32, policy: i32) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` lives across the call; a gone thread gives -1.
    unsafe { libc::sched_setscheduler(tid, policy, &param) == 0 }
}

/// Sets one thread's nice (0: the calling thread).
fn set_nice(tid: i32, nice: i32) {
    let pid = rustix::process::Pid::from_raw(tid);
    let _ = rustix::process::setpriority_process(pid, nice);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_and_nice() -> (i32, i32) {
        // SAFETY: reads this thread's policy.
        let policy = unsafe { libc::sched_getscheduler(0) };
        (policy, rustix::process::getpriority_process(None).unwrap())
    }

    #[test]
    fn the_archive_threads_take_idle_cpu_while_down_then_step_back_by_ten() {
        let mine = policy_and_nice();
        let (go_up, up) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
        let (down, after) = std::thread::scope(|s| {
            let archive = s.spawn(|| {
                while_down();
                let child = std::thread::spawn(policy_and_nice).join().unwrap();
                let down = (policy_and_nice(), child);
                go_up.wait();
                up.wait();
                let child = std::thread::spawn(policy_and_nice).join().unwrap();
                (down, (policy_and_nice(), child))
            });
            go_up.wait();
            services_up();
            up.wait();
            archive.join().unwrap()
        });
        // This test runs as root (CI and the build machine), where SCHED_IDLE is reversible.
        let idle = (libc::SCHED_IDLE, mine.1);
        assert_eq!(
            down,
            (idle, idle),
            "it and the threads it starts, while down"
        );
        let stepped = (libc::SCHED_OTHER, (mine.1 + ARCHIVE_NICE).min(19));
        assert_eq!(after, (stepped, stepped), "once the services are up");
        assert_eq!(
            policy_and_nice(),
            mine,
            "the rest of the process is untouched"
        );
    }
}
