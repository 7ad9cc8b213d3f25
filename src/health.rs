//! Liveness of the daemon's background tasks, read by `/readyz` and the systemd watchdog.
//!
//! Owns no tables. Invariants: a task counts as alive only while it beats within its own
//! `max_silence`; a task whose [`Liveness`] is dropped (it returned or panicked) is reported
//! stopped until the process shuts down; time is tokio time, so tests can pause it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// One task's state.
#[derive(Debug)]
struct TaskState {
    last_beat: Instant,
    max_silence: Duration,
    stopped: bool,
}

/// What is wrong with one task.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TaskProblem {
    /// The task's stable name, e.g. `metrics_upkeep`.
    pub task: &'static str,
    /// `task_stopped` or `task_stalled`.
    pub reason: &'static str,
}

/// Registry of background tasks; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct TaskHealth {
    tasks: Arc<Mutex<BTreeMap<&'static str, TaskState>>>,
}

impl TaskHealth {
    /// Registers a task that promises to beat at least every `max_silence`.
    pub fn register(&self, task: &'static str, max_silence: Duration) -> Liveness {
        self.lock().insert(
            task,
            TaskState {
                last_beat: Instant::now(),
                max_silence,
                stopped: false,
            },
        );
        Liveness {
            task,
            health: self.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, TaskState>> {
        // A poisoned lock only means a panic elsewhere while holding it; the map stays usable.
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Tasks that stopped or went silent for longer than they promised.
    pub fn problems(&self) -> Vec<TaskProblem> {
        let now = Instant::now();
        self.lock()
            .iter()
            .filter_map(|(task, state)| {
                let reason = if state.stopped {
                    "task_stopped"
                } else if now.duration_since(state.last_beat) > state.max_silence {
                    "task_stalled"
                } else {
                    return None;
                };
                Some(TaskProblem { task, reason })
            })
            .collect()
    }
}

impl TaskHealth {
    /// A task that has stayed silent for `limit` longer than it promised, if any: stuck for
    /// good, as far as the process can tell.
    pub fn stalled_past(&self, limit: Duration) -> Option<&'static str> {
        let now = Instant::now();
        self.lock()
            .iter()
            .find(|(_, state)| {
                !state.stopped && now.duration_since(state.last_beat) > state.max_silence + limit
            })
            .map(|(task, _)| *task)
    }
}

/// A task's handle: call [`Liveness::beat`] each round; dropping it marks the task stopped.
#[derive(Debug)]
pub struct Liveness {
    task: &'static str,
    health: TaskHealth,
}

impl Liveness {
    /// Records that the task made progress now.
    pub fn beat(&self) {
        if let Some(state) = self.health.lock().get_mut(self.task) {
            state.last_beat = Instant::now();
        }
    }
}

impl Drop for Liveness {
    fn drop(&mut self) {
        if let Some(state) = self.health.lock().get_mut(self.task) {
            state.stopped = true;
        }
    }
}

#[cfg(test)]
mod stall_tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_task_silent_past_the_limit_is_named() {
        let health = TaskHealth::default();
        let beating = health.register("beating", Duration::from_secs(10));
        let _silent = health.register("silent", Duration::from_secs(10));
        let limit = Duration::from_secs(300);
        for _ in 0..30 {
            tokio::time::advance(Duration::from_secs(10)).await;
            beating.beat();
        }
        assert_eq!(
            health.stalled_past(limit),
            None,
            "300 s silent: stalled, not yet past"
        );
        tokio::time::advance(Duration::from_secs(11)).await;
        beating.beat();
        assert_eq!(health.stalled_past(limit), Some("silent"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_beating_task_is_healthy_and_a_silent_one_stalls() {
        let health = TaskHealth::default();
        let beat = health.register("upkeep", Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(health.problems().is_empty());
        beat.beat();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(health.problems().is_empty(), "the beat reset the clock");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            health.problems(),
            [TaskProblem {
                task: "upkeep",
                reason: "task_stalled"
            }]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ends_is_reported_stopped() {
        let health = TaskHealth::default();
        let beat = health.register("instance_presence", Duration::from_secs(60));
        let task = tokio::spawn(async move {
            beat.beat();
            panic!("task failed");
        });
        assert!(task.await.is_err());
        assert_eq!(
            health.problems(),
            [TaskProblem {
                task: "instance_presence",
                reason: "task_stopped"
            }]
        );
    }
}
