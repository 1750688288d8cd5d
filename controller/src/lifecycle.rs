//! The deployment lifecycle on the controller, as a pure function:
//! [`on`]`(event, &state) -> Transition` — no I/O, no clock. Handlers load a
//! server's [`State`], call [`on`], and `db.rs` persists the new state in the
//! same transaction; the [`Effect`]s (power, tokens) run after the commit.
//!
//! `docs/lifecycle.md` ("On the controller") is this module's table: every
//! row there is a row of the test table below, and a test checks that the
//! two list the same events.

use byoi_wire::agent::Action;
use byoi_wire::{BootTarget, ErrorCode, Stage, Status};

/// A server's deployment as the lifecycle sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    /// Its id; `None` for one this transition creates.
    pub id: Option<i64>,
    /// Shown by `GET …/bringYourOwnImage` (a DELETE clears it).
    pub current: bool,
    /// `doing`, `done`, `error`.
    pub status: Status,
    /// Where it is.
    pub stage: Stage,
    /// The human message (OVH's `message`).
    pub message: String,
    /// Why it failed.
    pub code: Option<ErrorCode>,
    /// Bytes of the image received by the agent.
    pub bytes_done: u64,
    /// Size of the image as served, when known.
    pub bytes_total: Option<u64>,
}

impl Deployment {
    fn running(&self) -> bool {
        self.status == Status::Doing
    }

    fn fail(&mut self, code: ErrorCode, message: impl Into<String>) {
        self.status = Status::Error;
        self.code = Some(code);
        self.message = message.into();
    }
}

/// What the lifecycle knows of one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// What `/boot/{mac}` serves it.
    pub target: BootTarget,
    /// Its agent reported within the agent timeout.
    pub agent_up: bool,
    /// Its newest deployment (current or not).
    pub latest: Option<Deployment>,
}

/// The deployment an agent says it works on, as the database knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Named {
    /// Its id.
    pub id: i64,
    /// It ended because an operator erased it (`aborted`).
    pub cancelled: bool,
}

/// An agent's call; its token's boot mode comes with it in [`Event::Agent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentCall {
    /// `POST hello`: the inventory.
    Hello,
    /// `POST heartbeat`, naming what it runs.
    Heartbeat {
        /// The deployment the agent runs, if any.
        working_on: Option<Named>,
    },
    /// `GET job`. `Err` when no job can be made for the server (no such
    /// disk group): the deployment fails with that message.
    Job {
        /// Whether the job could be built from the inventory.
        buildable: Result<(), String>,
    },
    /// `POST progress`.
    Progress {
        /// The deployment reported on.
        id: i64,
        /// Its stage.
        stage: Stage,
        /// Bytes received.
        bytes_done: u64,
        /// Bytes in all, when known.
        bytes_total: Option<u64>,
    },
    /// `POST result`.
    Result {
        /// The deployment reported on.
        id: i64,
        /// `done` or `error`.
        status: Status,
        /// The error's code.
        code: Option<ErrorCode>,
        /// The human message.
        message: String,
    },
    /// `GET rescue`: the SSH keys of a rescue boot.
    Rescue,
}

/// Something that happened to a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `POST …/bringYourOwnImage` with a valid body.
    Post,
    /// The power cycle a transition asked for failed.
    PowerFailed {
        /// What the driver said.
        message: String,
    },
    /// `DELETE …/bringYourOwnImage`.
    Delete,
    /// `GET /boot/{mac}`.
    BootScript,
    /// A call of the server's agent, with its token's boot mode.
    Agent {
        /// `deploy` or `rescue`.
        mode: BootTarget,
        /// What it asked.
        call: AgentCall,
    },
    /// The agent reported once, then not within the agent timeout.
    AgentSilent,
    /// The server did not netboot into the agent within the boot timeout.
    NeverBooted {
        /// The boot timeout, in seconds.
        boot_timeout: u64,
    },
}

/// What the caller answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The (new or erased) deployment: 200 with its status.
    Deployment,
    /// 409: a deployment is running.
    Conflict(String),
    /// 404: there is nothing to act on.
    NotFound(String),
    /// A boot script: the agent in this mode, or the local disk.
    Script(BootTarget),
    /// An agent is told this.
    Action(Action),
    /// An agent gets the job (`continue`).
    Job,
    /// Nothing to say (timeouts, power failures).
    None,
}

/// What must happen after the new state is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Power-cycle the server (its driver may be `manual`).
    PowerCycle,
    /// Mint an agent token for this boot mode, revoking stale ones.
    MintToken(BootTarget),
    /// Retire the server's agent tokens: the deployment is done.
    RetireTokens,
    /// The agent reported on the latest deployment: its silence timer
    /// starts again.
    Reported,
}

/// The outcome of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The server's new state.
    pub state: State,
    /// The answer.
    pub reply: Reply,
    /// What to do after the commit, in order.
    pub effects: Vec<Effect>,
}

/// The message of a deployment that has just been created.
pub const STARTING: &str = "starting";
/// The message of a deployment erased by DELETE.
pub const CANCELLED: &str = "deployment cancelled";
/// The message of a deployment whose agent went silent.
pub const AGENT_SILENT: &str = "agent stopped reporting";

/// The transition `event` makes from `state`.
pub fn on(event: &Event, state: &State) -> Transition {
    let mut next = state.clone();
    let mut effects = Vec::new();
    let reply = match event {
        Event::Post => match &state.latest {
            Some(d) if d.running() => Reply::Conflict("A deployment is already in progress".to_owned()),
            _ => {
                next.latest = Some(Deployment {
                    id: None,
                    current: true,
                    status: Status::Doing,
                    stage: Stage::WaitingForAgent,
                    message: STARTING.to_owned(),
                    code: None,
                    bytes_done: 0,
                    bytes_total: None,
                });
                next.target = BootTarget::Deploy;
                // An agent that is up and waiting (after an error) picks the
                // job up at its next heartbeat: no reboot.
                if !(state.agent_up && state.target == BootTarget::Deploy) {
                    effects.push(Effect::PowerCycle);
                }
                Reply::Deployment
            }
        },
        Event::PowerFailed { message } => {
            if let Some(d) = next.latest.as_mut().filter(|d| d.running()) {
                d.fail(ErrorCode::PowerFailed, message.clone());
            }
            Reply::None
        }
        Event::Delete => match next.latest.as_mut().filter(|d| d.current) {
            // Nothing to erase: nothing changes, the server keeps booting
            // what it boots.
            None => Reply::NotFound("No deployment".to_owned()),
            Some(d) => {
                if d.running() {
                    d.fail(ErrorCode::Aborted, CANCELLED);
                }
                d.current = false;
                next.target = BootTarget::Rescue;
                effects.push(Effect::PowerCycle);
                Reply::Deployment
            }
        },
        Event::BootScript => match state.target {
            BootTarget::Local => Reply::Script(BootTarget::Local),
            mode => {
                effects.push(Effect::MintToken(mode));
                Reply::Script(mode)
            }
        },
        Event::Agent { mode, call } => agent(*mode, call, state, &mut next, &mut effects),
        Event::AgentSilent => {
            if let Some(d) = next.latest.as_mut().filter(|d| d.running()) {
                d.fail(ErrorCode::AgentLost, AGENT_SILENT);
            }
            Reply::None
        }
        Event::NeverBooted { boot_timeout } => {
            if let Some(d) = next.latest.as_mut().filter(|d| d.running()) {
                d.fail(
                    ErrorCode::AgentLost,
                    format!("the server did not netboot into the agent within {boot_timeout} s"),
                );
            }
            Reply::None
        }
    };
    Transition { state: next, reply, effects }
}

fn agent(mode: BootTarget, call: &AgentCall, state: &State, next: &mut State, effects: &mut Vec<Effect>) -> Reply {
    // A rescue boot never runs deployments.
    let running = state.latest.as_ref().filter(|d| d.running() && mode != BootTarget::Rescue);
    let running_id = running.and_then(|d| d.id);
    // The server is wanted in the other mode (rescue after a DELETE, a
    // deployment posted during rescue): the agent netboots again, as the
    // power cycle would have made it do.
    let elsewhere = mode != state.target && state.target != BootTarget::Local;
    let idle = |elsewhere: bool| if elsewhere { Action::Reboot } else { Action::Wait };
    let carry_on = if running.is_some() { Action::Continue } else { Action::Wait };
    if running.is_some() && !matches!(call, AgentCall::Rescue) {
        effects.push(Effect::Reported);
    }
    let latest = next.latest.as_mut().filter(|d| d.running() && d.id == running_id);
    match call {
        AgentCall::Hello => Reply::Action(if elsewhere { Action::Reboot } else { carry_on }),
        AgentCall::Heartbeat { working_on } => match working_on {
            // Working on a deployment that is no longer the running one:
            // abort only if it was cancelled.
            Some(n) if Some(n.id) != running_id && n.cancelled => Reply::Action(Action::Abort),
            None if elsewhere => Reply::Action(Action::Reboot),
            _ => Reply::Action(carry_on),
        },
        AgentCall::Job { buildable } => match (latest, buildable) {
            (None, _) => Reply::Action(idle(elsewhere)),
            (Some(d), Ok(())) => {
                d.stage = Stage::Downloading;
                d.message = Stage::Downloading.as_str().to_owned();
                d.bytes_done = 0;
                d.bytes_total = None;
                Reply::Job
            }
            (Some(d), Err(message)) => {
                d.fail(ErrorCode::InvalidRequest, message.clone());
                Reply::Action(Action::Wait)
            }
        },
        AgentCall::Progress { id, stage, bytes_done, bytes_total } => match latest {
            Some(d) if d.id == Some(*id) => {
                d.stage = *stage;
                d.message = stage.as_str().to_owned();
                d.bytes_total = *bytes_total;
                d.bytes_done = (*bytes_done).min(bytes_total.unwrap_or(u64::MAX));
                Reply::Action(Action::Continue)
            }
            _ => Reply::Action(Action::Abort),
        },
        AgentCall::Result { id, status, code, message } => match latest {
            Some(d) if d.id == Some(*id) => {
                if *status == Status::Done {
                    d.status = Status::Done;
                    d.stage = Stage::Rebooting;
                    d.code = None;
                    d.message = if message.is_empty() { "done".to_owned() } else { message.clone() };
                    next.target = BootTarget::Local;
                    effects.push(Effect::RetireTokens);
                    Reply::Action(Action::Reboot)
                } else {
                    // Anything but `done` is a failure; a code this build
                    // does not know is kept as `unknown`, with its message.
                    d.fail(code.unwrap_or(ErrorCode::Internal), message.clone());
                    Reply::Action(Action::Wait)
                }
            }
            // A disk finished after its deployment was cancelled must not
            // boot.
            _ if *status == Status::Done => Reply::Action(Action::Abort),
            _ => Reply::Action(idle(elsewhere)),
        },
        AgentCall::Rescue => Reply::Action(Action::Wait),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: i64 = 7;

    fn dep(status: Status, stage: Stage) -> Deployment {
        Deployment {
            id: Some(ID),
            current: true,
            status,
            stage,
            message: stage.as_str().to_owned(),
            code: None,
            bytes_done: 0,
            bytes_total: None,
        }
    }

    fn state(target: BootTarget, latest: Option<Deployment>) -> State {
        State { target, agent_up: false, latest }
    }

    fn running() -> State {
        state(BootTarget::Deploy, Some(dep(Status::Doing, Stage::Downloading)))
    }

    fn agent(mode: BootTarget, call: AgentCall) -> Event {
        Event::Agent { mode, call }
    }

    fn result(status: Status, code: Option<ErrorCode>, message: &str) -> AgentCall {
        AgentCall::Result { id: ID, status, code, message: message.into() }
    }

    /// One row: the event's text in `docs/lifecycle.md`, a state, an event,
    /// and what must come of it.
    struct Row {
        doc: &'static str,
        before: State,
        event: Event,
        after: State,
        reply: Reply,
        effects: Vec<Effect>,
    }

    fn with(s: &State, f: impl FnOnce(&mut State)) -> State {
        let mut s = s.clone();
        f(&mut s);
        s
    }

    fn latest(s: &State, f: impl FnOnce(&mut Deployment)) -> State {
        with(s, |s| f(s.latest.as_mut().unwrap()))
    }

    fn rows() -> Vec<Row> {
        use BootTarget::{Deploy, Local, Rescue};
        let post = "`POST …/bringYourOwnImage` (409 if one is `doing`); power cycle";
        let boot = "`/boot/{mac}`";
        let hello = "agent `hello` (inventory), `heartbeat`";
        let job = "agent `GET job`";
        let progress = "agent `progress`";
        let done = "agent `result` done";
        let error = "agent `result` error";
        let silent = "no report for `--agent-timeout`";
        let delete = "`DELETE …/bringYourOwnImage`; power cycle";
        let rescue = "rescue boot: agent `GET rescue`, heartbeats";
        let other_mode = "agent in one mode while the boot target is the other (`deploy` ↔ `rescue`)";
        let late_done = "agent `result` done for a deployment erased meanwhile";
        let power_failed = "the power cycle fails";
        let never = "the server does not netboot within `--boot-timeout`";
        let idle_local = state(Local, None);
        let new = Deployment {
            id: None,
            current: true,
            status: Status::Doing,
            stage: Stage::WaitingForAgent,
            message: STARTING.into(),
            code: None,
            bytes_done: 0,
            bytes_total: None,
        };
        let finished = with(&latest(&running(), |d| *d = dep(Status::Done, Stage::Rebooting)), |s| s.target = Local);
        let failed = latest(&running(), |d| d.fail(ErrorCode::ChecksumMismatch, "Bad sha256"));
        let erased = latest(&running(), |d| {
            d.fail(ErrorCode::Aborted, CANCELLED);
            d.current = false;
        });
        let erased = with(&erased, |s| s.target = Rescue);
        vec![
            Row {
                doc: post,
                before: idle_local.clone(),
                event: Event::Post,
                after: State { target: Deploy, agent_up: false, latest: Some(new.clone()) },
                reply: Reply::Deployment,
                effects: vec![Effect::PowerCycle],
            },
            Row {
                doc: post,
                before: finished.clone(),
                event: Event::Post,
                after: with(&finished, |s| {
                    s.target = Deploy;
                    s.latest = Some(new.clone());
                }),
                reply: Reply::Deployment,
                effects: vec![Effect::PowerCycle],
            },
            Row {
                doc: post,
                before: running(),
                event: Event::Post,
                after: running(),
                reply: Reply::Conflict("A deployment is already in progress".into()),
                effects: vec![],
            },
            // After an error the agent is up and waiting: it takes the next
            // job without a reboot.
            Row {
                doc: post,
                before: with(&failed, |s| s.agent_up = true),
                event: Event::Post,
                after: with(&failed, |s| {
                    s.agent_up = true;
                    s.latest = Some(new.clone());
                }),
                reply: Reply::Deployment,
                effects: vec![],
            },
            Row {
                doc: power_failed,
                before: state(Deploy, Some(new.clone())),
                event: Event::PowerFailed { message: "ipmitool failed".into() },
                after: state(
                    Deploy,
                    Some(Deployment {
                        status: Status::Error,
                        code: Some(ErrorCode::PowerFailed),
                        message: "ipmitool failed".into(),
                        ..new.clone()
                    }),
                ),
                reply: Reply::None,
                effects: vec![],
            },
            Row {
                doc: boot,
                before: running(),
                event: Event::BootScript,
                after: running(),
                reply: Reply::Script(Deploy),
                effects: vec![Effect::MintToken(Deploy)],
            },
            Row {
                doc: boot,
                before: finished.clone(),
                event: Event::BootScript,
                after: finished.clone(),
                reply: Reply::Script(Local),
                effects: vec![],
            },
            Row {
                doc: boot,
                before: erased.clone(),
                event: Event::BootScript,
                after: erased.clone(),
                reply: Reply::Script(Rescue),
                effects: vec![Effect::MintToken(Rescue)],
            },
            Row {
                doc: hello,
                before: running(),
                event: agent(Deploy, AgentCall::Hello),
                after: running(),
                reply: Reply::Action(Action::Continue),
                effects: vec![Effect::Reported],
            },
            Row {
                doc: hello,
                before: failed.clone(),
                event: agent(Deploy, AgentCall::Heartbeat { working_on: None }),
                after: failed.clone(),
                reply: Reply::Action(Action::Wait),
                effects: vec![],
            },
            Row {
                doc: job,
                before: state(Deploy, Some(new.clone())).clone(),
                event: agent(Deploy, AgentCall::Job { buildable: Ok(()) }),
                after: state(
                    Deploy,
                    Some(Deployment { stage: Stage::Downloading, message: "downloading".into(), ..new.clone() }),
                ),
                reply: Reply::Job,
                effects: vec![Effect::Reported],
            },
            Row {
                doc: job,
                before: running(),
                event: agent(Deploy, AgentCall::Job { buildable: Err("diskGroupId 3 does not exist".into()) }),
                after: latest(&running(), |d| d.fail(ErrorCode::InvalidRequest, "diskGroupId 3 does not exist")),
                reply: Reply::Action(Action::Wait),
                effects: vec![Effect::Reported],
            },
            Row {
                doc: job,
                before: failed.clone(),
                event: agent(Deploy, AgentCall::Job { buildable: Ok(()) }),
                after: failed.clone(),
                reply: Reply::Action(Action::Wait),
                effects: vec![],
            },
            Row {
                doc: progress,
                before: running(),
                event: agent(
                    Deploy,
                    AgentCall::Progress { id: ID, stage: Stage::Writing, bytes_done: 900, bytes_total: Some(800) },
                ),
                after: latest(&running(), |d| {
                    d.stage = Stage::Writing;
                    d.message = "writing".into();
                    d.bytes_done = 800;
                    d.bytes_total = Some(800);
                }),
                reply: Reply::Action(Action::Continue),
                effects: vec![Effect::Reported],
            },
            Row {
                doc: progress,
                before: erased.clone(),
                event: agent(
                    Deploy,
                    AgentCall::Progress { id: ID, stage: Stage::Writing, bytes_done: 1, bytes_total: None },
                ),
                after: erased.clone(),
                reply: Reply::Action(Action::Abort),
                effects: vec![],
            },
            Row {
                doc: done,
                before: running(),
                event: agent(Deploy, result(Status::Done, None, "")),
                after: with(&latest(&running(), |d| *d = dep(Status::Done, Stage::Rebooting)), |s| {
                    s.target = Local;
                    s.latest.as_mut().unwrap().message = "done".into();
                }),
                reply: Reply::Action(Action::Reboot),
                effects: vec![Effect::Reported, Effect::RetireTokens],
            },
            Row {
                doc: error,
                before: running(),
                event: agent(Deploy, result(Status::Error, Some(ErrorCode::ChecksumMismatch), "Bad sha256")),
                after: failed.clone(),
                reply: Reply::Action(Action::Wait),
                effects: vec![Effect::Reported],
            },
            // A newer agent's code is recorded, never refused.
            Row {
                doc: error,
                before: running(),
                event: agent(Deploy, result(Status::Error, Some(ErrorCode::Unknown), "disk on fire")),
                after: latest(&running(), |d| d.fail(ErrorCode::Unknown, "disk on fire")),
                reply: Reply::Action(Action::Wait),
                effects: vec![Effect::Reported],
            },
            Row {
                doc: silent,
                before: running(),
                event: Event::AgentSilent,
                after: latest(&running(), |d| d.fail(ErrorCode::AgentLost, AGENT_SILENT)),
                reply: Reply::None,
                effects: vec![],
            },
            Row {
                doc: never,
                before: state(Deploy, Some(new.clone())),
                event: Event::NeverBooted { boot_timeout: 900 },
                after: state(
                    Deploy,
                    Some(Deployment {
                        status: Status::Error,
                        code: Some(ErrorCode::AgentLost),
                        message: "the server did not netboot into the agent within 900 s".into(),
                        ..new.clone()
                    }),
                ),
                reply: Reply::None,
                effects: vec![],
            },
            Row {
                doc: delete,
                before: running(),
                event: Event::Delete,
                after: erased.clone(),
                reply: Reply::Deployment,
                effects: vec![Effect::PowerCycle],
            },
            Row {
                doc: delete,
                before: finished.clone(),
                event: Event::Delete,
                after: latest(&with(&finished, |s| s.target = Rescue), |d| d.current = false),
                reply: Reply::Deployment,
                effects: vec![Effect::PowerCycle],
            },
            // Nothing to erase: 404, and the server is left alone.
            Row {
                doc: delete,
                before: idle_local.clone(),
                event: Event::Delete,
                after: idle_local.clone(),
                reply: Reply::NotFound("No deployment".into()),
                effects: vec![],
            },
            Row {
                doc: delete,
                before: erased.clone(),
                event: Event::Delete,
                after: erased.clone(),
                reply: Reply::NotFound("No deployment".into()),
                effects: vec![],
            },
            Row {
                doc: delete,
                before: erased.clone(),
                event: agent(Deploy, AgentCall::Heartbeat { working_on: Some(Named { id: ID, cancelled: true }) }),
                after: erased.clone(),
                reply: Reply::Action(Action::Abort),
                effects: vec![],
            },
            Row {
                doc: rescue,
                before: erased.clone(),
                event: agent(Rescue, AgentCall::Rescue),
                after: erased.clone(),
                reply: Reply::Action(Action::Wait),
                effects: vec![],
            },
            // A rescue token gets no job, even while one runs.
            Row {
                doc: rescue,
                before: with(&running(), |s| s.target = Rescue),
                event: agent(Rescue, AgentCall::Job { buildable: Ok(()) }),
                after: with(&running(), |s| s.target = Rescue),
                reply: Reply::Action(Action::Wait),
                effects: vec![],
            },
            Row {
                doc: other_mode,
                before: erased.clone(),
                event: agent(Deploy, AgentCall::Hello),
                after: erased.clone(),
                reply: Reply::Action(Action::Reboot),
                effects: vec![],
            },
            Row {
                doc: other_mode,
                before: running(),
                event: agent(Rescue, AgentCall::Heartbeat { working_on: None }),
                after: running(),
                reply: Reply::Action(Action::Reboot),
                effects: vec![],
            },
            Row {
                doc: other_mode,
                before: erased.clone(),
                event: agent(Deploy, AgentCall::Job { buildable: Ok(()) }),
                after: erased.clone(),
                reply: Reply::Action(Action::Reboot),
                effects: vec![],
            },
            Row {
                doc: other_mode,
                before: erased.clone(),
                event: agent(Deploy, result(Status::Error, Some(ErrorCode::Aborted), "aborted")),
                after: erased.clone(),
                reply: Reply::Action(Action::Reboot),
                effects: vec![],
            },
            Row {
                doc: late_done,
                before: erased.clone(),
                event: agent(Deploy, result(Status::Done, None, "deployed")),
                after: erased.clone(),
                reply: Reply::Action(Action::Abort),
                effects: vec![],
            },
        ]
    }

    #[test]
    fn every_row_of_the_table() {
        for (i, row) in rows().into_iter().enumerate() {
            let t = on(&row.event, &row.before);
            assert_eq!(t.state, row.after, "row {i} ({}): state", row.doc);
            assert_eq!(t.reply, row.reply, "row {i} ({}): reply", row.doc);
            assert_eq!(t.effects, row.effects, "row {i} ({}): effects", row.doc);
        }
    }

    /// The events of `docs/lifecycle.md`'s controller table, in order.
    fn documented_events() -> Vec<String> {
        let doc = include_str!("../../docs/lifecycle.md");
        let section = doc.split("## On the controller").nth(1).expect("the controller section");
        section
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| event") && !l.starts_with("|---"))
            .map(|l| l.trim_start_matches("| ").split(" | ").next().unwrap_or_default().to_owned())
            .collect()
    }

    #[test]
    fn the_doc_and_the_table_list_the_same_events() {
        let doc = documented_events();
        let mut tested: Vec<String> = Vec::new();
        for r in rows() {
            if !tested.iter().any(|t| t == r.doc) {
                tested.push(r.doc.to_owned());
            }
        }
        let mut doc_sorted = doc.clone();
        doc_sorted.sort();
        tested.sort();
        assert_eq!(doc_sorted, tested, "docs/lifecycle.md and the lifecycle table differ");
    }
}
