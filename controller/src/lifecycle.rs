//! The deployment lifecycle on the controller, as a pure function:
//! [`on`]`(event, &state) -> Transition` — no I/O, no clock. Handlers load a
//! server's [`State`], call [`on`], and `db.rs` persists the new state in the
//! same transaction; the [`Effect`]s (power, tokens) run after the commit.
//!
//! `docs/lifecycle.md` ("On the controller") is this module's table: every
//! row there is a row of the test table below, and a test checks that the
//! two list the same events.

use std::net::IpAddr;

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
    /// The agent token (its hash) the job was handed to: the only one
    /// whose reports count. The job is handed out once.
    pub job_to: Option<String>,
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

/// Who made an agent call: its token (the hash) and the address it came
/// from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// SHA-256 of the bearer token.
    pub token: String,
    /// The connection's source address.
    pub addr: IpAddr,
}

/// The agent that claimed the server's boot: the first to say `hello`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Its token's hash.
    pub token: String,
    /// Its address; `None` for a claim carried over from a release that did
    /// not bind addresses: the claimant's next call binds it.
    pub addr: Option<IpAddr>,
}

impl Claim {
    /// The claim `caller` makes, address bound.
    fn by(caller: &Caller) -> Claim {
        Claim { token: caller.token.clone(), addr: Some(caller.addr) }
    }
}

/// What the lifecycle knows of one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// What `/boot/{mac}` serves it.
    pub target: BootTarget,
    /// The controller expects it to netboot into the agent (it power-cycled
    /// it, or an operator asked for a deploy or a rescue, within the boot
    /// timeout, and fewer than [`TOKENS_PER_BOOT`] tokens were minted):
    /// only then does `/boot/{mac}` mint an agent token.
    pub boot_expected: bool,
    /// The agent that claimed this boot.
    pub claim: Option<Claim>,
    /// Its newest deployment (current or not).
    pub latest: Option<Deployment>,
}

impl State {
    /// Closes the boot: no token is minted any more, the live ones are
    /// retired, the claim is gone.
    fn end_boot(&mut self, effects: &mut Vec<Effect>) {
        self.boot_expected = false;
        self.claim = None;
        effects.push(Effect::RetireTokens);
    }

    /// A new boot is expected: older tokens and the claim go, tokens may be
    /// minted again.
    fn expect_boot(&mut self, effects: &mut Vec<Effect>) {
        self.boot_expected = true;
        self.claim = None;
        effects.push(Effect::ExpectBoot);
    }

    /// Fails the running deployment, if any, and ends the boot.
    fn fail_running(&mut self, code: ErrorCode, message: impl Into<String>, effects: &mut Vec<Effect>) {
        if let Some(d) = self.latest.as_mut().filter(|d| d.running()) {
            d.fail(code, message);
            self.end_boot(effects);
        }
    }
}

/// Agent tokens `/boot/{mac}` mints per expected boot: iPXE may fetch the
/// script again after a failed kernel download.
pub const TOKENS_PER_BOOT: u32 = 3;

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
    /// `POST hello`: the inventory. The first claims the boot.
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
    /// `POST …/bringYourOwnImage` or `POST …/reinstall` with a valid body.
    Post,
    /// The power cycle a transition asked for failed.
    PowerFailed {
        /// What the driver said.
        message: String,
    },
    /// `DELETE …/bringYourOwnImage`.
    Delete,
    /// `POST …/inspect`: netboot the agent to report the hardware.
    Inspect,
    /// `GET /boot/{mac}`.
    BootScript,
    /// A call of an agent holding one of the server's tokens.
    Agent {
        /// Its token's boot mode: `deploy` or `rescue`.
        mode: BootTarget,
        /// Its token and address.
        caller: Caller,
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
    /// The agent keeps reporting, but neither the bytes nor the stage moved
    /// within the stall timeout.
    Stalled {
        /// The stall timeout, in seconds.
        stall_timeout: u64,
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
    /// A boot script that mints nothing: the server is wanted in the agent
    /// but no boot is expected; it asks again later.
    Idle,
    /// An agent is told this.
    Action(Action),
    /// An agent gets the job (`continue`).
    Job,
    /// 403 to an agent whose call is not its to make (another agent claimed
    /// the boot, or the job went to another token): nothing changes unless
    /// the transition says so; the agent netboots again.
    Refused(String),
    /// Nothing to say (timeouts, power failures).
    None,
    /// Accepted: the server is power-cycled into the agent (inspection).
    Accepted,
}

/// What must happen after the new state is committed (or, for database
/// work, within the same transaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Power-cycle the server (its driver may be `manual`).
    PowerCycle,
    /// Open a boot: retire the server's tokens; `/boot/{mac}` may mint
    /// [`TOKENS_PER_BOOT`] within the boot timeout.
    ExpectBoot,
    /// Mint an agent token for this boot mode (counted against the boot).
    MintToken(BootTarget),
    /// Retire the server's agent tokens and close the boot.
    RetireTokens,
    /// Keep the inventory the claimant sent with `hello`.
    KeepInventory,
    /// The agent reported on the latest deployment: its silence timer
    /// starts again.
    Reported,
    /// Keep the log lines the claimant forwarded with its report on the
    /// running deployment, in the same transaction.
    KeepLogs,
}

/// The outcome of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The server's new state.
    pub state: State,
    /// The answer.
    pub reply: Reply,
    /// What to do, in order.
    pub effects: Vec<Effect>,
}

/// The message of a deployment that has just been created.
pub const STARTING: &str = "starting";
/// The message of a deployment erased by DELETE.
pub const CANCELLED: &str = "deployment cancelled";
/// The message of a deployment whose agent went silent.
pub const AGENT_SILENT: &str = "agent stopped reporting";
/// The message of a deployment whose agent restarted after taking the job.
pub const AGENT_RESTARTED: &str = "the agent restarted during the deployment";

/// The message of a deployment that two agents claimed.
pub fn two_agents(first: Option<IpAddr>, second: IpAddr) -> String {
    let first = first.map_or_else(|| "an agent of an earlier release".to_owned(), |a| a.to_string());
    format!("two agents claimed this server: {first} (first) and {second}; refusing both")
}

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
                    job_to: None,
                });
                next.target = BootTarget::Deploy;
                next.expect_boot(&mut effects);
                effects.push(Effect::PowerCycle);
                Reply::Deployment
            }
        },
        Event::PowerFailed { message } => {
            next.fail_running(ErrorCode::PowerFailed, message.clone(), &mut effects);
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
                next.expect_boot(&mut effects);
                effects.push(Effect::PowerCycle);
                Reply::Deployment
            }
        },
        Event::Inspect => match &state.latest {
            Some(d) if d.running() => Reply::Conflict("A deployment is in progress".to_owned()),
            _ => {
                next.target = BootTarget::Inspect;
                next.expect_boot(&mut effects);
                effects.push(Effect::PowerCycle);
                Reply::Accepted
            }
        },
        Event::BootScript => match state.target {
            BootTarget::Local => Reply::Script(BootTarget::Local),
            mode if state.boot_expected => {
                effects.push(Effect::MintToken(mode));
                Reply::Script(mode)
            }
            _ => Reply::Idle,
        },
        Event::Agent { mode, caller, call } => agent(*mode, caller, call, state, &mut next, &mut effects),
        Event::AgentSilent => {
            next.fail_running(ErrorCode::AgentLost, AGENT_SILENT, &mut effects);
            Reply::None
        }
        Event::NeverBooted { boot_timeout } => {
            let message = format!("the server did not netboot into the agent within {boot_timeout} s");
            next.fail_running(ErrorCode::AgentLost, message, &mut effects);
            Reply::None
        }
        Event::Stalled { stall_timeout } => {
            if let Some(d) = state.latest.as_ref().filter(|d| d.running()) {
                let message = format!(
                    "the deployment made no progress for {stall_timeout} s ({}, {} of {} bytes)",
                    d.stage.as_str(),
                    d.bytes_done,
                    d.bytes_total.map_or_else(|| "?".to_owned(), |t| t.to_string())
                );
                next.fail_running(ErrorCode::Stalled, message, &mut effects);
            }
            Reply::None
        }
    };
    Transition { state: next, reply, effects }
}

/// An agent's call: first who may make it (the claim), then what it does.
fn agent(
    mode: BootTarget,
    caller: &Caller,
    call: &AgentCall,
    state: &State,
    next: &mut State,
    effects: &mut Vec<Effect>,
) -> Reply {
    let claimant =
        state.claim.as_ref().is_some_and(|c| c.token == caller.token && c.addr.is_none_or(|a| a == caller.addr));
    if claimant {
        // A claim carried over from an upgrade binds its address now.
        next.claim = Some(Claim::by(caller));
    } else {
        match (call, &state.claim) {
            // The first hello claims the boot.
            (AgentCall::Hello, None) => {
                next.claim = Some(Claim::by(caller));
            }
            // The same machine with a fresh token of the same boot: its
            // agent restarted. Fine until it took the job.
            (AgentCall::Hello, Some(c)) if c.addr == Some(caller.addr) => {
                if state.latest.as_ref().is_some_and(|d| d.running() && d.job_to.is_some()) {
                    next.fail_running(ErrorCode::AgentLost, AGENT_RESTARTED, effects);
                    return Reply::Refused(AGENT_RESTARTED.to_owned());
                }
                next.claim = Some(Claim::by(caller));
            }
            // A second agent: fail safe, whichever is the impostor.
            (AgentCall::Hello, Some(c)) => {
                let message = two_agents(c.addr, caller.addr);
                if let Some(d) = next.latest.as_mut().filter(|d| d.running()) {
                    d.fail(ErrorCode::AgentConflict, message.clone());
                }
                next.end_boot(effects);
                return Reply::Refused(message);
            }
            (_, None) => return Reply::Refused("this agent has not said hello".to_owned()),
            (_, Some(_)) => return Reply::Refused("another agent claimed this boot".to_owned()),
        }
    }
    // From here on, the caller is the claimant.
    // Only a deploy boot runs deployments.
    let running = state.latest.as_ref().filter(|d| d.running() && mode == BootTarget::Deploy);
    let running_id = running.and_then(|d| d.id);
    // Tokens are retired whenever the target changes, so an agent in the
    // other mode cannot normally call; if one does, it netboots again.
    let elsewhere = mode != state.target && state.target != BootTarget::Local;
    let idle = |elsewhere: bool| if elsewhere { Action::Reboot } else { Action::Wait };
    let carry_on = if running.is_some() { Action::Continue } else { Action::Wait };
    if matches!(call, AgentCall::Hello) {
        effects.push(Effect::KeepInventory);
    }
    let mut latest = next.latest.as_mut().filter(|d| d.running() && d.id == running_id);
    let reply = match call {
        // An inspection is over once the inventory is in: the server
        // powers off and boots its disk next time.
        AgentCall::Hello if mode == BootTarget::Inspect && !elsewhere => {
            next.target = BootTarget::Local;
            next.end_boot(effects);
            Reply::Action(Action::PowerOff)
        }
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
            (Some(d), _) if d.job_to.is_some() => {
                Reply::Refused(format!("the job of deployment {} was already handed out", d.id.unwrap_or_default()))
            }
            (Some(d), Ok(())) => {
                d.stage = Stage::Downloading;
                d.message = Stage::Downloading.as_str().to_owned();
                d.bytes_done = 0;
                d.bytes_total = None;
                d.job_to = Some(caller.token.clone());
                Reply::Job
            }
            (Some(_), Err(message)) => {
                next.fail_running(ErrorCode::InvalidRequest, message.clone(), effects);
                Reply::Action(Action::Reboot)
            }
        },
        AgentCall::Progress { id, stage, bytes_done, bytes_total } => match latest.as_mut() {
            Some(d) if d.id == Some(*id) && d.job_to.as_ref() == Some(&caller.token) => {
                d.stage = *stage;
                d.message = stage.as_str().to_owned();
                d.bytes_total = *bytes_total;
                d.bytes_done = (*bytes_done).min(bytes_total.unwrap_or(u64::MAX));
                effects.push(Effect::KeepLogs);
                Reply::Action(Action::Continue)
            }
            _ => Reply::Action(Action::Abort),
        },
        AgentCall::Result { id, status, code, message } => match latest {
            Some(d) if d.id == Some(*id) && d.job_to.as_ref() == Some(&caller.token) => {
                effects.push(Effect::KeepLogs);
                if *status == Status::Done {
                    d.status = Status::Done;
                    d.stage = Stage::Rebooting;
                    d.code = None;
                    d.message = if message.is_empty() { "done".to_owned() } else { message.clone() };
                    next.target = BootTarget::Local;
                } else {
                    // Anything but `done` is a failure; a code this build
                    // does not know is kept as `unknown`, with its message.
                    d.fail(code.unwrap_or(ErrorCode::Internal), message.clone());
                }
                // Either way the boot is over: the agent netboots again, and
                // finds its disk or the idle script.
                next.end_boot(effects);
                Reply::Action(Action::Reboot)
            }
            // A disk finished for a deployment that is not running must not
            // boot.
            _ if *status == Status::Done => Reply::Action(Action::Abort),
            _ => Reply::Action(idle(elsewhere)),
        },
        // The SSH keys and the host key are for a rescue boot only.
        AgentCall::Rescue if mode != BootTarget::Rescue => Reply::Refused("this is not a rescue boot".to_owned()),
        AgentCall::Rescue => Reply::Action(Action::Wait),
    };
    if running.is_some() && !matches!(call, AgentCall::Rescue) && !matches!(reply, Reply::Refused(_)) {
        effects.push(Effect::Reported);
    }
    reply
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const ID: i64 = 7;
    /// The real agent's token and address.
    const T1: &str = "hash-1";
    const A1: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    /// Another token, another address.
    const T2: &str = "hash-2";
    const A2: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    fn caller(token: &str, addr: IpAddr) -> Caller {
        Caller { token: token.into(), addr }
    }

    fn claim(token: &str, addr: IpAddr) -> Option<Claim> {
        Some(Claim { token: token.into(), addr: Some(addr) })
    }

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
            job_to: Some(T1.into()),
        }
    }

    fn state(target: BootTarget, latest: Option<Deployment>) -> State {
        State { target, boot_expected: false, claim: None, latest }
    }

    /// The agent T1@A1 claimed the boot and runs the job.
    fn running() -> State {
        State { claim: claim(T1, A1), ..state(BootTarget::Deploy, Some(dep(Status::Doing, Stage::Downloading))) }
    }

    /// A call of the real agent.
    fn agent(mode: BootTarget, call: AgentCall) -> Event {
        Event::Agent { mode, caller: caller(T1, A1), call }
    }

    /// A call of someone else.
    fn other(token: &str, addr: IpAddr, call: AgentCall) -> Event {
        Event::Agent { mode: BootTarget::Deploy, caller: caller(token, addr), call }
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

    /// The boot is over: no claim, nothing expected.
    fn ended(s: &State) -> State {
        with(s, |s| {
            s.claim = None;
            s.boot_expected = false;
        })
    }

    fn rows() -> Vec<Row> {
        use BootTarget::{Deploy, Inspect, Local, Rescue};
        let post = "`POST …/bringYourOwnImage` (409 if one is `doing`); power cycle";
        let inspect = "`POST …/inspect` (409 if a deployment is `doing`); power cycle";
        let inspected = "inspect boot: agent `hello` (inventory)";
        let boot = "`/boot/{mac}`";
        let hello = "agent `hello` (inventory), `heartbeat`";
        let second = "a second agent's `hello` (another address)";
        let restarted = "agent `hello` with a new token from the claimant's address";
        let refused = "any other call of a token that did not claim the boot";
        let job = "agent `GET job`";
        let progress = "agent `progress`";
        let done = "agent `result` done";
        let error = "agent `result` error";
        let silent = "no report for `--agent-timeout`";
        let stalled = "no progress for `--stall-timeout`";
        let delete = "`DELETE …/bringYourOwnImage`; power cycle";
        let rescue = "rescue boot: agent `GET rescue`, heartbeats";
        let other_mode = "agent in one mode while the boot target is another (`deploy`, `rescue`, `inspect`)";
        let late_done = "agent `result` done for a deployment that is not running";
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
            job_to: None,
        };
        let expecting = State { boot_expected: true, ..state(Deploy, Some(new.clone())) };
        // Booted, claimed, the job not yet taken.
        let claimed = State {
            claim: claim(T1, A1),
            ..state(Deploy, Some(Deployment { id: Some(ID), job_to: None, ..new.clone() }))
        };
        let finished =
            ended(&with(&latest(&running(), |d| *d = dep(Status::Done, Stage::Rebooting)), |s| s.target = Local));
        let failed = ended(&latest(&running(), |d| d.fail(ErrorCode::ChecksumMismatch, "Bad sha256")));
        let erased = latest(&running(), |d| {
            d.fail(ErrorCode::Aborted, CANCELLED);
            d.current = false;
        });
        let erased = with(&ended(&erased), |s| {
            s.target = Rescue;
            s.boot_expected = true;
        });
        // A rescue agent claimed the boot after the DELETE.
        let in_rescue = with(&erased, |s| s.claim = claim(T1, A1));
        let two = two_agents(Some(A1), A2);
        vec![
            Row {
                doc: post,
                before: idle_local.clone(),
                event: Event::Post,
                after: State { target: Deploy, boot_expected: true, claim: None, latest: Some(new.clone()) },
                reply: Reply::Deployment,
                effects: vec![Effect::ExpectBoot, Effect::PowerCycle],
            },
            Row {
                doc: post,
                before: finished.clone(),
                event: Event::Post,
                after: with(&finished, |s| {
                    s.target = Deploy;
                    s.boot_expected = true;
                    s.latest = Some(new.clone());
                }),
                reply: Reply::Deployment,
                effects: vec![Effect::ExpectBoot, Effect::PowerCycle],
            },
            Row {
                doc: post,
                before: running(),
                event: Event::Post,
                after: running(),
                reply: Reply::Conflict("A deployment is already in progress".into()),
                effects: vec![],
            },
            // An agent still holding a claim (rescue) loses it: every
            // deployment starts with a fresh boot and fresh tokens.
            Row {
                doc: post,
                before: in_rescue.clone(),
                event: Event::Post,
                after: with(&in_rescue, |s| {
                    s.target = Deploy;
                    s.claim = None;
                    s.boot_expected = true;
                    s.latest = Some(new.clone());
                }),
                reply: Reply::Deployment,
                effects: vec![Effect::ExpectBoot, Effect::PowerCycle],
            },
            Row {
                doc: power_failed,
                before: expecting.clone(),
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
                effects: vec![Effect::RetireTokens],
            },
            Row {
                doc: boot,
                before: expecting.clone(),
                event: Event::BootScript,
                after: expecting.clone(),
                reply: Reply::Script(Deploy),
                effects: vec![Effect::MintToken(Deploy)],
            },
            Row {
                doc: boot,
                before: erased.clone(),
                event: Event::BootScript,
                after: erased.clone(),
                reply: Reply::Script(Rescue),
                effects: vec![Effect::MintToken(Rescue)],
            },
            // No boot expected (the boot timeout passed, the tokens were
            // all minted, or the boot ended): nothing is minted.
            Row {
                doc: boot,
                before: running(),
                event: Event::BootScript,
                after: running(),
                reply: Reply::Idle,
                effects: vec![],
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
                doc: hello,
                before: with(&expecting, |s| s.latest.as_mut().unwrap().id = Some(ID)),
                event: agent(Deploy, AgentCall::Hello),
                after: with(&claimed, |s| s.boot_expected = true),
                reply: Reply::Action(Action::Continue),
                effects: vec![Effect::KeepInventory, Effect::Reported],
            },
            Row {
                doc: hello,
                before: running(),
                event: agent(Deploy, AgentCall::Hello),
                after: running(),
                reply: Reply::Action(Action::Continue),
                effects: vec![Effect::KeepInventory, Effect::Reported],
            },
            // A claim carried over from an upgrade binds its address.
            Row {
                doc: hello,
                before: with(&running(), |s| s.claim = Some(Claim { token: T1.into(), addr: None })),
                event: agent(Deploy, AgentCall::Heartbeat { working_on: None }),
                after: running(),
                reply: Reply::Action(Action::Continue),
                effects: vec![Effect::Reported],
            },
            Row {
                doc: hello,
                before: with(&in_rescue, |s| s.target = Rescue),
                event: agent(Rescue, AgentCall::Heartbeat { working_on: None }),
                after: in_rescue.clone(),
                reply: Reply::Action(Action::Wait),
                effects: vec![],
            },
            Row {
                doc: second,
                before: running(),
                event: other(T2, A2, AgentCall::Hello),
                after: ended(&latest(&running(), |d| d.fail(ErrorCode::AgentConflict, two.clone()))),
                reply: Reply::Refused(two.clone()),
                effects: vec![Effect::RetireTokens],
            },
            // Whichever came first: the impostor may be the first.
            Row {
                doc: second,
                before: claimed.clone(),
                event: other(T2, A2, AgentCall::Hello),
                after: ended(&latest(&claimed, |d| d.fail(ErrorCode::AgentConflict, two.clone()))),
                reply: Reply::Refused(two.clone()),
                effects: vec![Effect::RetireTokens],
            },
            // In rescue there is no deployment to fail: the boot ends.
            Row {
                doc: second,
                before: in_rescue.clone(),
                event: Event::Agent { mode: Rescue, caller: caller(T2, A2), call: AgentCall::Hello },
                after: ended(&in_rescue),
                reply: Reply::Refused(two.clone()),
                effects: vec![Effect::RetireTokens],
            },
            Row {
                doc: restarted,
                before: claimed.clone(),
                event: other(T2, A1, AgentCall::Hello),
                after: with(&claimed, |s| s.claim = claim(T2, A1)),
                reply: Reply::Action(Action::Continue),
                effects: vec![Effect::KeepInventory, Effect::Reported],
            },
            Row {
                doc: restarted,
                before: running(),
                event: other(T2, A1, AgentCall::Hello),
                after: ended(&latest(&running(), |d| d.fail(ErrorCode::AgentLost, AGENT_RESTARTED))),
                reply: Reply::Refused(AGENT_RESTARTED.into()),
                effects: vec![Effect::RetireTokens],
            },
            // A forged report changes nothing: another token, or the
            // claimant's token from another address.
            Row {
                doc: refused,
                before: running(),
                event: other(T2, A2, result(Status::Done, None, "")),
                after: running(),
                reply: Reply::Refused("another agent claimed this boot".into()),
                effects: vec![],
            },
            Row {
                doc: refused,
                before: running(),
                event: other(
                    T1,
                    A2,
                    AgentCall::Progress { id: ID, stage: Stage::Writing, bytes_done: 1, bytes_total: None },
                ),
                after: running(),
                reply: Reply::Refused("another agent claimed this boot".into()),
                effects: vec![],
            },
            Row {
                doc: refused,
                before: expecting.clone(),
                event: agent(Deploy, AgentCall::Job { buildable: Ok(()) }),
                after: expecting.clone(),
                reply: Reply::Refused("this agent has not said hello".into()),
                effects: vec![],
            },
            Row {
                doc: job,
                before: claimed.clone(),
                event: agent(Deploy, AgentCall::Job { buildable: Ok(()) }),
                after: latest(&claimed, |d| {
                    d.stage = Stage::Downloading;
                    d.message = "downloading".into();
                    d.job_to = Some(T1.into());
                }),
                reply: Reply::Job,
                effects: vec![Effect::Reported],
            },
            // Once: a second fetch gets nothing.
            Row {
                doc: job,
                before: running(),
                event: agent(Deploy, AgentCall::Job { buildable: Ok(()) }),
                after: running(),
                reply: Reply::Refused("the job of deployment 7 was already handed out".into()),
                effects: vec![],
            },
            Row {
                doc: job,
                before: claimed.clone(),
                event: agent(Deploy, AgentCall::Job { buildable: Err("diskGroupId 3 does not exist".into()) }),
                after: ended(&latest(&claimed, |d| d.fail(ErrorCode::InvalidRequest, "diskGroupId 3 does not exist"))),
                reply: Reply::Action(Action::Reboot),
                effects: vec![Effect::RetireTokens, Effect::Reported],
            },
            Row {
                doc: job,
                before: with(&failed, |s| s.claim = claim(T1, A1)),
                event: agent(Deploy, AgentCall::Job { buildable: Ok(()) }),
                after: with(&failed, |s| s.claim = claim(T1, A1)),
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
                effects: vec![Effect::KeepLogs, Effect::Reported],
            },
            Row {
                doc: progress,
                before: running(),
                event: agent(
                    Deploy,
                    AgentCall::Progress { id: ID - 1, stage: Stage::Writing, bytes_done: 1, bytes_total: None },
                ),
                after: running(),
                reply: Reply::Action(Action::Abort),
                effects: vec![Effect::Reported],
            },
            Row {
                doc: done,
                before: running(),
                event: agent(Deploy, result(Status::Done, None, "")),
                after: with(&finished, |s| s.latest.as_mut().unwrap().message = "done".into()),
                reply: Reply::Action(Action::Reboot),
                effects: vec![Effect::KeepLogs, Effect::RetireTokens, Effect::Reported],
            },
            Row {
                doc: error,
                before: running(),
                event: agent(Deploy, result(Status::Error, Some(ErrorCode::ChecksumMismatch), "Bad sha256")),
                after: failed.clone(),
                reply: Reply::Action(Action::Reboot),
                effects: vec![Effect::KeepLogs, Effect::RetireTokens, Effect::Reported],
            },
            // A newer agent's code is recorded, never refused.
            Row {
                doc: error,
                before: running(),
                event: agent(Deploy, result(Status::Error, Some(ErrorCode::Unknown), "disk on fire")),
                after: ended(&latest(&running(), |d| d.fail(ErrorCode::Unknown, "disk on fire"))),
                reply: Reply::Action(Action::Reboot),
                effects: vec![Effect::KeepLogs, Effect::RetireTokens, Effect::Reported],
            },
            Row {
                doc: silent,
                before: running(),
                event: Event::AgentSilent,
                after: ended(&latest(&running(), |d| d.fail(ErrorCode::AgentLost, AGENT_SILENT))),
                reply: Reply::None,
                effects: vec![Effect::RetireTokens],
            },
            Row {
                doc: stalled,
                before: latest(&running(), |d| {
                    d.bytes_done = 5;
                    d.bytes_total = Some(10);
                }),
                event: Event::Stalled { stall_timeout: 600 },
                after: ended(&latest(&running(), |d| {
                    d.bytes_done = 5;
                    d.bytes_total = Some(10);
                    d.fail(
                        ErrorCode::Stalled,
                        "the deployment made no progress for 600 s (downloading, 5 of 10 bytes)",
                    );
                })),
                reply: Reply::None,
                effects: vec![Effect::RetireTokens],
            },
            Row {
                doc: never,
                before: expecting.clone(),
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
                effects: vec![Effect::RetireTokens],
            },
            Row {
                doc: delete,
                before: running(),
                event: Event::Delete,
                after: erased.clone(),
                reply: Reply::Deployment,
                effects: vec![Effect::ExpectBoot, Effect::PowerCycle],
            },
            Row {
                doc: delete,
                before: finished.clone(),
                event: Event::Delete,
                after: latest(
                    &with(&finished, |s| {
                        s.target = Rescue;
                        s.boot_expected = true;
                    }),
                    |d| d.current = false,
                ),
                reply: Reply::Deployment,
                effects: vec![Effect::ExpectBoot, Effect::PowerCycle],
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
                before: in_rescue.clone(),
                event: agent(Deploy, AgentCall::Heartbeat { working_on: Some(Named { id: ID, cancelled: true }) }),
                after: in_rescue.clone(),
                reply: Reply::Action(Action::Abort),
                effects: vec![],
            },
            Row {
                doc: rescue,
                before: in_rescue.clone(),
                event: agent(Rescue, AgentCall::Rescue),
                after: in_rescue.clone(),
                reply: Reply::Action(Action::Wait),
                effects: vec![],
            },
            // A deploy token gets no rescue keys.
            Row {
                doc: rescue,
                before: running(),
                event: agent(Deploy, AgentCall::Rescue),
                after: running(),
                reply: Reply::Refused("this is not a rescue boot".into()),
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
                before: in_rescue.clone(),
                event: agent(Deploy, AgentCall::Hello),
                after: in_rescue.clone(),
                reply: Reply::Action(Action::Reboot),
                effects: vec![Effect::KeepInventory],
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
                before: in_rescue.clone(),
                event: agent(Deploy, AgentCall::Job { buildable: Ok(()) }),
                after: in_rescue.clone(),
                reply: Reply::Action(Action::Reboot),
                effects: vec![],
            },
            Row {
                doc: other_mode,
                before: in_rescue.clone(),
                event: agent(Deploy, result(Status::Error, Some(ErrorCode::Aborted), "aborted")),
                after: in_rescue.clone(),
                reply: Reply::Action(Action::Reboot),
                effects: vec![],
            },
            Row {
                doc: late_done,
                before: in_rescue.clone(),
                event: agent(Deploy, result(Status::Done, None, "deployed")),
                after: in_rescue.clone(),
                reply: Reply::Action(Action::Abort),
                effects: vec![],
            },
            Row {
                doc: inspect,
                before: finished.clone(),
                event: Event::Inspect,
                after: with(&finished, |s| {
                    s.target = Inspect;
                    s.boot_expected = true;
                }),
                reply: Reply::Accepted,
                effects: vec![Effect::ExpectBoot, Effect::PowerCycle],
            },
            Row {
                doc: inspect,
                before: in_rescue.clone(),
                event: Event::Inspect,
                after: with(&in_rescue, |s| {
                    s.target = Inspect;
                    s.claim = None;
                }),
                reply: Reply::Accepted,
                effects: vec![Effect::ExpectBoot, Effect::PowerCycle],
            },
            Row {
                doc: inspect,
                before: running(),
                event: Event::Inspect,
                after: running(),
                reply: Reply::Conflict("A deployment is in progress".into()),
                effects: vec![],
            },
            Row {
                doc: boot,
                before: state(Inspect, None),
                event: Event::BootScript,
                after: state(Inspect, None),
                reply: Reply::Idle,
                effects: vec![],
            },
            Row {
                doc: boot,
                before: State { boot_expected: true, ..state(Inspect, None) },
                event: Event::BootScript,
                after: State { boot_expected: true, ..state(Inspect, None) },
                reply: Reply::Script(Inspect),
                effects: vec![Effect::MintToken(Inspect)],
            },
            Row {
                doc: inspected,
                before: State { boot_expected: true, ..state(Inspect, Some(dep(Status::Done, Stage::Rebooting))) },
                event: agent(Inspect, AgentCall::Hello),
                after: state(Local, Some(dep(Status::Done, Stage::Rebooting))),
                reply: Reply::Action(Action::PowerOff),
                effects: vec![Effect::KeepInventory, Effect::RetireTokens],
            },
            // A deployment posted meanwhile retired the inspection's
            // tokens; were one to call, it netboots into the deployment.
            Row {
                doc: other_mode,
                before: expecting.clone(),
                event: agent(Inspect, AgentCall::Hello),
                after: with(&expecting, |s| s.claim = claim(T1, A1)),
                reply: Reply::Action(Action::Reboot),
                effects: vec![Effect::KeepInventory],
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
        let section = section.split("\n## ").next().unwrap_or_default();
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
