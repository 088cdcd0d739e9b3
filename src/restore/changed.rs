//! What differs between the plan made before the project's lock was held and the plan made
//! again under it. Pure: two plans in, sentences out.
use super::plan::RollbackPlan;

/// Each difference a user would want told, as a short phrase; empty when the plans agree.
pub fn changes(before: &RollbackPlan, after: &RollbackPlan) -> Vec<String> {
    let mut out = Vec::new();
    if before.stop != after.stop {
        out.push(format!(
            "running was {}, is now {}, so the rollback stops {}",
            list(&before.stop),
            list(&after.stop),
            list(&after.stop)
        ));
    }
    if before.order != after.order {
        out.push(format!(
            "the order is now {}: {}",
            after.order.as_str(),
            after.order_reason
        ));
    }
    for (b, a) in before.actions.iter().zip(&after.actions) {
        if b.target != a.target || b.action != a.action || b.io != a.io {
            out.push(format!(
                "{}: {} ({}) instead of {} ({})",
                a.target, a.action, a.reason, b.action, b.reason
            ));
        }
    }
    if before.actions.len() != after.actions.len() {
        out.push(format!(
            "{} volumes to handle instead of {}",
            after.actions.len(),
            before.actions.len()
        ));
    }
    out
}

/// True when what is replaced or kept, or how, is not what the user confirmed.
pub fn actions_differ(before: &RollbackPlan, after: &RollbackPlan) -> bool {
    before.actions.len() != after.actions.len()
        || before
            .actions
            .iter()
            .zip(&after.actions)
            .any(|(b, a)| b.target != a.target || b.action != a.action)
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "nothing".into()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_spelled_as_their_json() {
        use Action::*;
        for a in [
            SwapBind,
            StageInMount,
            InPlace,
            SwapVolume,
            EngineRefill,
            Keep,
        ] {
            assert_eq!(serde_json::to_value(a).unwrap(), a.as_str());
        }
    }
    use crate::restore::plan::{Action, Mode, Order};
    use crate::services::Running;

    fn plan(stop: &[&str], order: Order) -> RollbackPlan {
        let stop: Vec<String> = stop.iter().map(|s| s.to_string()).collect();
        RollbackPlan {
            backup_id: 1,
            mode: Mode::Full,
            actions: Vec::new(),
            start: stop.clone(),
            running: Running {
                services: stop.clone(),
                containers: Vec::new(),
            },
            stop,
            space: Vec::new(),
            image_changes: Vec::new(),
            safety_recipients: Vec::new(),
            order,
            order_reason: "because".into(),
            warnings: Vec::new(),
            hooks: Vec::new(),
            archive: None,
            pin: None,
        }
    }

    #[test]
    fn services_started_while_it_verified_are_said_and_stopped() {
        let before = plan(&[], Order::StageFirst);
        let after = plan(&["db"], Order::StageFirst);
        let c = changes(&before, &after);
        assert_eq!(c.len(), 1);
        assert!(c[0].contains("running was nothing, is now db, so the rollback stops db"));
        assert!(!actions_differ(&before, &after));
    }

    #[test]
    fn plans_that_agree_say_nothing() {
        let p = plan(&["db"], Order::StopFirst);
        assert!(changes(&p, &p.clone()).is_empty());
    }

    #[test]
    fn another_order_is_said() {
        let c = changes(&plan(&[], Order::StageFirst), &plan(&[], Order::StopFirst));
        assert_eq!(c, vec!["the order is now stop-first: because".to_string()]);
    }
}
