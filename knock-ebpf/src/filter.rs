//! The filter program: parse, decide, count, and hand stopped packets to
//! concealment.

use crate::{
    conceal,
    parse::{self, Packet, ParseError, Parsed, TCP_FIN, TCP_RST},
    spa, trace,
};
use aya_ebpf::{
    bindings::xdp_action,
    cty::c_void,
    helpers::generated::{bpf_ktime_get_coarse_ns, bpf_loop},
    macros::{map, xdp},
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf, lpm_trie::Key},
    programs::XdpContext,
};
use knock_common::{
    Addr, CONCEAL_CLOSED, Event, EventBudget, Flow, FlowKey, Grant, IPPROTO_UDP, Instance, Knock,
    MAX_RULES, PORT_ROLES_ENTRIES, Penalty, PortRoles, Progress, Reason, RuleConfig,
    SOURCE_HORIZON_SLOTS, SPENT_ENTRIES, Settings, SourceHorizon, SourceRule, SpentKey, event_kind,
    horizon_units,
    machine::{self, Outcome},
    port_roles_index, record_failure, reset_cause, source_slot,
};

// Sizes here are defaults; the loader sets the configured ones before loading.
#[map]
pub(crate) static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);
#[map]
static RULES: Array<RuleConfig> = Array::with_max_entries(MAX_RULES as u32, 0);
#[map]
pub(crate) static PORT_ROLES: Array<PortRoles> = Array::with_max_entries(PORT_ROLES_ENTRIES, 0);
#[map]
pub(crate) static FIRST_STEPS: LruHashMap<SourceRule, Progress> =
    LruHashMap::with_max_entries(65536, 0);
#[map]
pub(crate) static PROGRESS: LruHashMap<SourceRule, Progress> =
    LruHashMap::with_max_entries(16384, 0);
#[map]
pub(crate) static GRANTS: LruHashMap<SourceRule, Grant> = LruHashMap::with_max_entries(8192, 0);
#[map]
pub(crate) static FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::with_max_entries(65536, 0);
#[map]
static PENALTIES: LruHashMap<Addr, Penalty> = LruHashMap::with_max_entries(65536, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Reason::COUNT, 0);
#[map]
static FLOOD_EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::with_max_entries(1, 0);
#[map]
static ALLOW: LpmTrie<Addr, u8> = LpmTrie::with_max_entries(1, 0);
#[map]
static DENY: LpmTrie<Addr, u8> = LpmTrie::with_max_entries(1, 0);
#[map]
pub(crate) static SOURCE_HORIZONS: Array<SourceHorizon> =
    Array::with_max_entries(SOURCE_HORIZON_SLOTS, 0);
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);
/// Events the full ring buffer could not take.
#[map]
static LOST_EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
/// What the loaders of one pin directory share (the seed, which rule owns
/// which index); never read here.
#[map]
static INSTANCE: Array<Instance> = Array::with_max_entries(1, 0);

#[xdp]
pub fn xknock(ctx: XdpContext) -> u32 {
    let reason = match try_xknock(&ctx) {
        Ok(reason) => reason,
        Err(error) => error.reason(),
    };
    conclude(&ctx, reason)
}

/// Counts the verdict, lets a running trace see it (the trace then acts on
/// it), and acts on it.
#[inline(always)]
fn conclude(ctx: &XdpContext, reason: Reason) -> u32 {
    count(reason);
    // Returns unless a trace takes the packet over (and acts as below).
    trace::decision(ctx, reason);
    act(ctx, reason)
}

/// Counts a verdict by its reason.
#[inline(always)]
fn count(reason: Reason) {
    if let Some(counter) = COUNTERS.get_ptr_mut(reason as u32) {
        // SAFETY: a per-CPU slot, only touched by this CPU while it runs us.
        unsafe { *counter += 1 };
    }
}

/// What the verdict means for the packet: pass it, or stop it and (with
/// `conceal = "closed"`) hand it to the answering program.
#[inline(always)]
pub(crate) fn act(ctx: &XdpContext, reason: Reason) -> u32 {
    if reason.passes() {
        xdp_action::XDP_PASS
    } else {
        if reason.conceals()
            && SETTINGS
                .get(0)
                .is_some_and(|settings| settings.conceal == CONCEAL_CLOSED)
        {
            // Does not return when the answering program takes over.
            conceal::hand_over(ctx);
        }
        xdp_action::XDP_DROP
    }
}

/// The kernel's monotonic clock. The coarse variant (jiffy resolution) is
/// plenty for second-scale timeouts and costs about half of bpf_ktime_get_ns.
#[inline(always)]
pub(crate) fn now_ns() -> u64 {
    // SAFETY: a helper without arguments, allowed for XDP programs.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
fn try_xknock(ctx: &XdpContext) -> Result<Reason, ParseError> {
    let l4 = match parse::parse(ctx)? {
        Parsed::NotIp => return Ok(Reason::PassNotIp),
        Parsed::OtherProtocol => return Ok(Reason::PassOtherProtocol),
        Parsed::LaterFragment => return Ok(Reason::PassLaterFragment),
        Parsed::Transport(l4) => l4,
    };
    let echo = l4.is_echo();
    let roles = port_roles_index(l4.proto, l4.dst_port())
        .and_then(|index| PORT_ROLES.get(index))
        .copied()
        .unwrap_or_default();
    let opens = l4.opens_connection();
    if !opens && roles.knock_rules == 0 && roles.protect_rules == 0 {
        return Ok(Reason::PassUnprotected);
    }
    let Some(settings) = SETTINGS.get(0) else {
        return Ok(Reason::PassUnprotected);
    };
    let packet = l4.with_source(ctx)?;
    if roles.spa_rules != 0 && l4.proto == IPPROTO_UDP {
        if listed(&DENY, settings.deny_entries, &packet.src()) {
            return Ok(Reason::DropDenied);
        }
        return Ok(spa::hand_over(ctx, settings, &packet));
    }
    let slot = source_slot(&packet.src_words, settings.source_seed);
    let horizon = horizon_at(slot);
    let knock_port = roles.knock_rules != 0;
    if opens && (knock_port || covered_now(horizon.knocking_until).is_some()) {
        if let Some(slot_ptr) = KNOCK_HANDOVER.get_ptr_mut(0) {
            // SAFETY: a per-CPU slot, only touched by this CPU while it runs
            // us and the program we hand over to.
            unsafe {
                *slot_ptr = KnockHandover {
                    packet,
                    roles,
                    slot,
                    admitted_until: horizon.admitted_until,
                }
            };
        }
        // Does not return when the knock program takes over. If it is not
        // in place the knock rules cannot run: the packet is judged as no
        // knock (a knock port drops it).
        // SAFETY: the slot holds an XDP program of this object or nothing.
        unsafe { KNOCK.tail_call(ctx, 0) };
    }
    if echo {
        return Ok(Reason::PassOtherProtocol);
    }
    Ok(beyond_knocks(
        settings,
        &packet,
        roles,
        slot,
        horizon.admitted_until,
    ))
}

/// The verdict on a packet that is no knock step: a knock port stops it, a
/// protected port guards, and any other port lets it pass.
#[inline(always)]
fn beyond_knocks(
    settings: &Settings,
    packet: &Packet,
    roles: PortRoles,
    slot: u32,
    admitted_until: u32,
) -> Reason {
    if roles.knock_rules != 0 {
        return Reason::DropKnockPort;
    }
    if roles.protect_rules != 0 {
        return guard_protected(settings, packet, roles.protect_rules, slot, admitted_until);
    }
    Reason::PassUnprotected
}

/// `xknock_knock`, in slot 0; set by the loader.
#[map]
static KNOCK: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// A packet that may be a knock step, as the filter hands it to
/// `xknock_knock` with what it already found.
#[derive(Clone, Copy)]
struct KnockHandover {
    packet: Packet,
    roles: PortRoles,
    slot: u32,
    admitted_until: u32,
}

/// The packet being handed over, per CPU.
#[map]
static KNOCK_HANDOVER: PerCpuArray<KnockHandover> = PerCpuArray::with_max_entries(1, 0);

/// Runs a TCP SYN, UDP datagram or echo request that may be a knock step
/// through every rule's state machine, then decides it as the filter would. A program of
/// its own (the filter tail-calls it for packets to knock ports and from
/// sources mid-sequence) so the verifier checks the knock rules once, apart
/// from the filter's many parsing paths: together they passed its limit.
#[xdp]
pub fn xknock_knock(ctx: XdpContext) -> u32 {
    // Nothing handed over cannot happen; if it did, fail closed.
    let reason = try_knock().unwrap_or(Reason::DropMalformed);
    conclude(&ctx, reason)
}

#[inline(always)]
fn try_knock() -> Option<Reason> {
    let handover = *KNOCK_HANDOVER.get(0)?;
    let settings = SETTINGS.get(0)?;
    let packet = handover.packet;
    let knock_port = handover.roles.knock_rules != 0;
    let reason = run_knock_rules(
        settings,
        packet.src(),
        knock_of(&packet),
        knock_port,
        handover.slot,
    );
    if packet.l4.is_echo() {
        // A ping passes whatever it did to knock progress, and the host
        // answers it as it answers every ping: no size of echo request
        // looks different from another.
        return Some(match reason {
            Some(
                Reason::DropKnockAdvanced | Reason::DropKnockGranted | Reason::DropKnockDuplicate,
            ) => Reason::PassEchoKnock,
            _ => Reason::PassOtherProtocol,
        });
    }
    Some(reason.unwrap_or_else(|| {
        beyond_knocks(
            settings,
            &packet,
            handover.roles,
            handover.slot,
            handover.admitted_until,
        )
    }))
}

/// The knock a TCP segment, UDP datagram or echo request makes.
#[inline(always)]
fn knock_of(packet: &Packet) -> Knock {
    Knock {
        port: packet.l4.dst_port(),
        proto: packet.l4.proto,
        _pad: 0,
    }
}

/// A copy of a `SOURCE_HORIZONS` slot. The lookup cannot fail (the index
/// is in range); if it did, the answer would be "may hold state".
#[inline(always)]
fn horizon_at(slot: u32) -> SourceHorizon {
    SOURCE_HORIZONS.get(slot).copied().unwrap_or(SourceHorizon {
        knocking_until: u32::MAX,
        admitted_until: u32::MAX,
    })
}

/// Now, if the horizon `until` still covers it. A slot never raised answers
/// without reading the clock, which spares a spoofed flood the cost.
#[inline(always)]
fn covered_now(until: u32) -> Option<u64> {
    if until == 0 {
        return None;
    }
    let now = now_ns();
    (until > horizon_units(now)).then_some(now)
}

/// The two horizons of a `SOURCE_HORIZONS` slot.
#[derive(Clone, Copy)]
enum Horizon {
    Knocking,
    Admitted,
}

/// Raises one of a slot's horizons to its span past `now`. Racing CPUs may
/// lose each other's write; `horizon_span` allows for that.
#[inline(always)]
fn raise_horizon(settings: &Settings, slot: u32, horizon: Horizon, now: u64) {
    let Some(slot) = SOURCE_HORIZONS.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: a value pointer the array lookup just returned; a u32 store
    // cannot tear.
    let slot = unsafe { &mut *slot };
    let (until, span) = match horizon {
        Horizon::Knocking => (&mut slot.knocking_until, settings.knocking_horizon),
        Horizon::Admitted => (&mut slot.admitted_until, settings.admitted_horizon),
    };
    let raised = horizon_units(now).wrapping_add(span);
    if *until < raised {
        *until = raised;
    }
}

/// What one knock-rule step reads and decides; shared with the `bpf_loop`
/// callback through a pointer to the caller's stack.
struct KnockScan {
    src: Addr,
    knock: Knock,
    /// Whether the packet's port is a step of any rule.
    knock_port: bool,
    /// The source's `SOURCE_HORIZONS` slot.
    horizon_slot: u32,
    verdict: Option<Reason>,
}

/// Runs a SYN or UDP datagram through every rule's state machine for its
/// source; returns the drop reason when it was a knock step for some rule.
///
/// The per-rule work runs under `bpf_loop`, so the verifier checks it once
/// instead of once per rule and per combination of earlier outcomes.
#[inline(always)]
fn run_knock_rules(
    settings: &Settings,
    src: Addr,
    knock: Knock,
    knock_port: bool,
    horizon_slot: u32,
) -> Option<Reason> {
    let mut scan = KnockScan {
        src,
        knock,
        knock_port,
        horizon_slot,
        verdict: None,
    };
    let rules = settings.rules.min(MAX_RULES as u32);
    // SAFETY: the callback is a BPF subprogram with the signature bpf_loop
    // expects, and `scan` outlives the call.
    unsafe {
        bpf_loop(
            rules,
            knock_rule as *mut c_void,
            (&mut scan as *mut KnockScan).cast(),
            0,
        )
    };
    scan.verdict
}

/// One rule's step for `bpf_loop`: returns 0 to go on, 1 to stop.
#[inline(never)]
extern "C" fn knock_rule(rule_index: u64, scan: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer run_knock_rules gave it.
    let scan = unsafe { &mut *scan.cast::<KnockScan>() };
    let rule_index = rule_index as u32;
    let (Some(settings), Some(rule)) = (SETTINGS.get(0), RULES.get(rule_index)) else {
        return 1;
    };
    let key = SourceRule {
        addr: scan.src,
        rule: rule_index,
    };
    let knock = scan.knock;
    let stored = Stored::find(&key);
    // Only a first step may create progress: spoofed noise costs two lookups.
    if stored.is_none() && rule.sequence[0] != knock {
        return 0;
    }
    // Denied and penalized sources do not knock: their packets to knock
    // ports drop, and all else goes on as if they had no progress.
    if listed(&DENY, settings.deny_entries, &scan.src) {
        scan.verdict = scan.knock_port.then_some(Reason::DropDenied);
        return 1;
    }
    let now = now_ns();
    let penalty = PENALTIES.get_ptr_mut(&scan.src);
    // SAFETY: a value pointer the map lookup just returned.
    if penalty.is_some_and(|p| now < unsafe { (*p).ignored_until_ns }) {
        scan.verdict = scan.knock_port.then_some(Reason::DropPenalized);
        return 1;
    }
    let progress = stored.get();
    let transition = machine::on_packet(rule, progress.as_ref(), knock, scan.knock_port, now);
    if let Some(cause) = transition.reset {
        emit(event_kind::RESET, cause, &scan.src, knock, rule_index, 0, 0);
        count_failure(settings, penalty, &scan.src, knock, now);
    }
    let reason = match transition.outcome {
        Outcome::Idle => {
            stored.forget(&key);
            return 0;
        }
        Outcome::Untouched => return 0,
        Outcome::Duplicate => Reason::DropKnockDuplicate,
        Outcome::Advanced(next) => {
            stored.keep(&key, &next);
            raise_horizon(settings, scan.horizon_slot, Horizon::Knocking, now);
            let step = next.next_step as u8;
            // First steps are what a spoofed flood sends: their events share
            // the flood budget; later steps come from real clients.
            if step > 1 || within_flood_budget(settings) {
                emit(
                    event_kind::PROGRESS,
                    0,
                    &scan.src,
                    knock,
                    rule_index,
                    step,
                    0,
                );
            }
            Reason::DropKnockAdvanced
        }
        Outcome::Granted => {
            stored.forget(&key);
            if rule.once != 0 && spend(rule_index, rule.sequence_tag, now) {
                emit(
                    event_kind::RESET,
                    reset_cause::SPENT,
                    &scan.src,
                    knock,
                    rule_index,
                    0,
                    0,
                );
                count_failure(settings, penalty, &scan.src, knock, now);
                if scan.verdict.is_none() {
                    scan.verdict = Some(Reason::DropKnockPort);
                }
                return 0;
            }
            let expires_ns = now + rule.open_for_ns;
            let _ = GRANTS.insert(&key, &Grant { expires_ns }, 0);
            raise_horizon(settings, scan.horizon_slot, Horizon::Admitted, now);
            let step = rule.steps as u8;
            emit(
                event_kind::GRANT,
                0,
                &scan.src,
                knock,
                rule_index,
                step,
                expires_ns,
            );
            Reason::DropKnockGranted
        }
    };
    if scan.verdict.is_none() || reason == Reason::DropKnockGranted {
        scan.verdict = Some(reason);
    }
    0
}

/// Sequences of rules that open once and have: a replay of one, however
/// soon, grants nothing.
#[map]
static SPENT: LruHashMap<SpentKey, u64> = LruHashMap::with_max_entries(SPENT_ENTRIES, 0);

/// Marks a rule's sequence as used; true if it already was.
#[inline(always)]
fn spend(rule: u32, sequence_tag: u32, now: u64) -> bool {
    let key = SpentKey { rule, sequence_tag };
    // SAFETY: only tests whether the lookup found something.
    if unsafe { SPENT.get(&key) }.is_some() {
        return true;
    }
    // BPF_NOEXIST: of two CPUs completing it at once, one grants.
    const BPF_NOEXIST: u64 = 1;
    SPENT.insert(&key, &now, BPF_NOEXIST).is_err()
}

/// Where a source's progress through a rule is stored: sources that sent only
/// the first step in `FIRST_STEPS`, sources past it in `PROGRESS`, so a flood
/// of spoofed first steps can only ever evict other first steps.
#[derive(Clone, Copy)]
enum Stored {
    Nowhere,
    FirstStep(*mut Progress),
    Later(*mut Progress),
}

impl Stored {
    #[inline(always)]
    fn find(key: &SourceRule) -> Stored {
        if let Some(slot) = PROGRESS.get_ptr_mut(key) {
            return Stored::Later(slot);
        }
        match FIRST_STEPS.get_ptr_mut(key) {
            Some(slot) => Stored::FirstStep(slot),
            None => Stored::Nowhere,
        }
    }

    #[inline(always)]
    fn is_none(self) -> bool {
        matches!(self, Stored::Nowhere)
    }

    #[inline(always)]
    fn get(self) -> Option<Progress> {
        match self {
            Stored::Nowhere => None,
            // SAFETY: a value pointer a map lookup returned in this run; LRU
            // values stay valid until the program returns.
            Stored::FirstStep(slot) | Stored::Later(slot) => Some(unsafe { *slot }),
        }
    }

    #[inline(always)]
    fn forget(self, key: &SourceRule) {
        let _ = match self {
            Stored::Nowhere => Ok(()),
            Stored::FirstStep(_) => FIRST_STEPS.remove(key),
            Stored::Later(_) => PROGRESS.remove(key),
        };
    }

    /// Stores `next` in the map its step belongs to, moving it if needed.
    #[inline(always)]
    fn keep(self, key: &SourceRule, next: &Progress) {
        match (self, next.next_step <= 1) {
            // SAFETY: as in `get`; the whole value is overwritten.
            (Stored::FirstStep(slot), true) | (Stored::Later(slot), false) => unsafe {
                *slot = *next
            },
            (_, first) => {
                self.forget(key);
                let map = if first { &FIRST_STEPS } else { &PROGRESS };
                let _ = map.insert(key, next, 0);
            }
        }
    }
}

/// Counts a failed attempt against `src`; enough of them within the window
/// start a penalty.
#[inline(always)]
fn count_failure(
    settings: &Settings,
    penalty: Option<*mut Penalty>,
    src: &Addr,
    knock: Knock,
    now: u64,
) {
    let mut fresh = Penalty {
        window_start_ns: now,
        ..Penalty::default()
    };
    // SAFETY: a value pointer the map lookup returned earlier in this run.
    let state = match penalty {
        Some(slot) => unsafe { &mut *slot },
        None => &mut fresh,
    };
    let penalized = record_failure(settings, state, now);
    if penalty.is_none() {
        let _ = PENALTIES.insert(src, state, 0);
    }
    if penalized {
        emit(
            event_kind::PENALIZED,
            0,
            src,
            knock,
            u32::from(u16::MAX),
            0,
            state.ignored_until_ns,
        );
    }
}

/// Decides a packet to a protected port: admitted flows, allowlisted sources
/// and live grants pass; everything else (SYNs, stray ACKs, UDP) is dropped.
/// The denylist wins over the allowlist and over grants. A source whose
/// `admitted_until` horizon has passed has no flow or grant: its lookups are
/// skipped.
#[inline(always)]
fn guard_protected(
    settings: &Settings,
    packet: &Packet,
    protect_rules: u16,
    slot: u32,
    admitted_until: u32,
) -> Reason {
    let admitted_now = covered_now(admitted_until);
    if let Some(now) = admitted_now
        && admitted_flow(settings, packet, &flow_key(packet), now)
    {
        raise_horizon(settings, slot, Horizon::Admitted, now);
        return Reason::PassAdmittedFlow;
    }
    if listed(&DENY, settings.deny_entries, &packet.src()) {
        return Reason::DropDenied;
    }
    if listed(&ALLOW, settings.allow_entries, &packet.src()) {
        return Reason::PassAllowlisted;
    }
    if let Some(now) = admitted_now
        && let Some(rule) = live_grant(packet, protect_rules, now)
    {
        if packet.l4.opens_connection() {
            let flow = Flow {
                last_seen_ns: now,
                rule,
                closing: 0,
            };
            let _ = FLOWS.insert(&flow_key(packet), &flow, 0);
        }
        raise_horizon(settings, slot, Horizon::Admitted, now);
        return Reason::PassGranted;
    }
    emit_denied(settings, packet);
    Reason::DropProtected
}

#[inline(always)]
fn flow_key(packet: &Packet) -> FlowKey {
    FlowKey {
        addr: packet.src(),
        src_port: packet.src_port,
        dst_port: packet.l4.dst_port,
        proto: packet.l4.proto,
        _pad: [0; 3],
    }
}

/// Whether the packet belongs to a live admitted flow; updates the flow
/// (last seen, FIN, RST) and forgets it once idle.
#[inline(always)]
fn admitted_flow(settings: &Settings, packet: &Packet, flow_key: &FlowKey, now: u64) -> bool {
    let Some(flow) = FLOWS.get_ptr_mut(flow_key) else {
        return false;
    };
    // SAFETY: a value pointer the map lookup just returned.
    let flow = unsafe { &mut *flow };
    let idle_ns = if packet.l4.proto == IPPROTO_UDP {
        settings.udp_idle_ns
    } else if flow.closing != 0 {
        settings.tcp_closing_ns
    } else {
        settings.tcp_idle_ns
    };
    // A SYN on a closing flow is a new connection reusing the port: it
    // needs a grant of its own.
    let reopens = flow.closing != 0 && packet.l4.opens_connection();
    if now.wrapping_sub(flow.last_seen_ns) > idle_ns || reopens {
        let _ = FLOWS.remove(flow_key);
        return false;
    }
    flow.last_seen_ns = now;
    if packet.l4.tcp_flags & TCP_RST != 0 {
        let _ = FLOWS.remove(flow_key);
    } else if packet.l4.tcp_flags & TCP_FIN != 0 {
        flow.closing = 1;
    }
    true
}

/// The first rule protecting the packet's port that holds a live grant for
/// its source.
#[inline(always)]
fn live_grant(packet: &Packet, protect_rules: u16, now: u64) -> Option<u32> {
    for rule_index in 0..MAX_RULES as u32 {
        if protect_rules & (1 << rule_index) == 0 {
            continue;
        }
        let key = SourceRule {
            addr: packet.src(),
            rule: rule_index,
        };
        // SAFETY: read-only copy out of a value the lookup just returned.
        if unsafe { GRANTS.get(&key) }.is_some_and(|grant| now < grant.expires_ns) {
            return Some(rule_index);
        }
    }
    None
}

/// Whether `addr` falls in a prefix of an allow or deny trie.
#[inline(always)]
fn listed(list: &LpmTrie<Addr, u8>, entries: u32, addr: &Addr) -> bool {
    entries != 0 && list.get(&Key::new(128, *addr)).is_some()
}

/// Denied attempts and first steps can come at flood rate: each CPU reports
/// at most `flood_events_per_sec` of them per window of at least a second.
#[inline(always)]
fn within_flood_budget(settings: &Settings) -> bool {
    within_budget(&FLOOD_EVENT_BUDGET, settings.flood_events_per_sec)
}

/// Whether this CPU's budget in `budgets` (slot 0) admits one more of at
/// most `limit` a second.
#[inline(always)]
pub(crate) fn within_budget(budgets: &PerCpuArray<EventBudget>, limit: u32) -> bool {
    let Some(budget) = budgets.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a per-CPU slot, only touched by this CPU while it runs us.
    let budget = unsafe { &mut *budget };
    budget.admit(limit, now_ns)
}

#[inline(always)]
fn emit_denied(settings: &Settings, packet: &Packet) {
    if !within_flood_budget(settings) {
        return;
    }
    let target = Knock {
        port: packet.l4.dst_port(),
        proto: packet.l4.proto,
        _pad: 0,
    };
    emit(
        event_kind::DENIED,
        0,
        &packet.src(),
        target,
        u32::from(u16::MAX),
        0,
        0,
    );
}

#[inline(always)]
fn emit(kind: u8, detail: u8, addr: &Addr, knock: Knock, rule: u32, step: u8, expires_ns: u64) {
    let event = Event {
        addr: *addr,
        expires_ns,
        kind,
        detail,
        proto: knock.proto,
        step,
        port: knock.port,
        rule: rule as u16,
    };
    // A full ring buffer loses the event, never the verdict.
    if EVENTS.output(&event, 0).is_err()
        && let Some(lost) = LOST_EVENTS.get_ptr_mut(0)
    {
        // SAFETY: a per-CPU slot, only touched by this CPU while it runs us.
        unsafe { *lost += 1 };
    }
}
