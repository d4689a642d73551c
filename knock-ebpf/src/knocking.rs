//! Knocking: every rule's state machine run on a packet that may be a knock
//! step, the progress it keeps per source and rule, the sequences that open
//! once, and the penalty of sources that keep failing. It runs in a program
//! of its own (`xknock_knock`, in `programs.rs`), which the filter
//! tail-calls for packets to knock ports and from sources mid-sequence.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    cty::c_void,
    helpers::generated::bpf_loop,
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use knock_common::{
    Addr, BPF_NOEXIST, Event, FIRST_STEP_WAYS, FirstStepBucket, FirstStepKey, Knock, MAX_RULES,
    ONCE_HELD, Penalty, PortRoles, Progress, Reason, ResetCause, SPENT_ENTRIES, Settings,
    SourceRule, SpentKey, displaced, horizon_units,
    machine::{self, Outcome},
    record_failure, record_progress, way_of,
};

use crate::{
    events, guard,
    horizon::{self, Horizon},
    parse::Packet,
    settings::{self, now_ns},
};

// Sizes here are defaults; the loader sets the configured ones before loading.
/// Sources one step into a sequence, in buckets of one-word records
/// (`knock_common::first_step`): a first step costs a cache line, and a
/// flood of them displaces only other first steps.
#[map]
static FIRST_STEPS: Array<FirstStepBucket> = Array::with_max_entries(8192, BPF_F_MMAPABLE);
#[map]
static PROGRESS: LruHashMap<SourceRule, Progress> = LruHashMap::with_max_entries(16384, 0);
#[map]
static PENALTIES: LruHashMap<Addr, Penalty> = LruHashMap::with_max_entries(65536, 0);

/// `xknock_knock`, in slot 0; set by the loader.
#[map]
static KNOCK: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// A packet that may be a knock step, as the filter hands it to
/// `xknock_knock` with what it already found.
#[derive(Clone, Copy)]
pub struct KnockHandover {
    pub packet: Packet,
    pub roles: PortRoles,
    /// The source's `SOURCE_HORIZONS` slot.
    pub slot: u32,
    pub admitted_until: u32,
    /// The source's `source_hash`, which picks its `FIRST_STEPS` bucket.
    pub source_hash: u32,
    /// What `warm` read.
    #[allow(dead_code, reason = "kept so that the read is made")]
    pub warmed: u32,
}

/// Reads the first word of the source's `FIRST_STEPS` bucket for a packet
/// to a knock port, so that the cache line is on its way while the filter
/// hands the packet over (a spoofed flood's first steps find their
/// buckets in no cache). Returns part of the word, for the hand-over to
/// keep: a read whose value nothing used would be no read at all.
#[inline(always)]
pub fn warm(settings: &Settings, source_hash: u32, knock_port: bool) -> u32 {
    if !knock_port {
        return 0;
    }
    let first = FirstStepKey::new(source_hash, settings.first_step_bucket_bits, 0, 0);
    match bucket(first) {
        Some(bucket) => read_way(bucket, 0) as u32,
        None => 0,
    }
}

/// The packet being handed over, per CPU.
#[map]
static KNOCK_HANDOVER: PerCpuArray<KnockHandover> = PerCpuArray::with_max_entries(1, 0);

/// The packet the filter handed over, as `hand_over` left it. (A
/// reference: returning a copy inside an `Option` cost `xknock_knock` a
/// check of the copy's niche.)
#[inline(always)]
pub fn handed_over() -> Option<&'static KnockHandover> {
    KNOCK_HANDOVER.get(0)
}

/// Runs a TCP SYN, UDP datagram or echo request that may be a knock step
/// through every rule's state machine. The verdict for an echo request, and
/// for any other packet that was a knock step; none for a packet that was
/// not, which is then decided as the filter would.
#[inline(always)]
pub fn judge(settings: &Settings, handover: &KnockHandover) -> Option<Reason> {
    let packet = handover.packet;
    let knock_port = handover.roles.knock_rules != 0;
    let reason = run_knock_rules(
        settings,
        packet.src(),
        handover.source_hash,
        packet.knock(),
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
    reason
}

/// The verdict on a plain first step, decided without the rule loop: a
/// TCP SYN or UDP datagram to a port that is a step of one rule only, its
/// first, from a source that holds no other state (no progress past a
/// first step in its horizon slot, no record of failures that still
/// counts, no first step of any rule in its bucket) while no deny list is
/// set. That is every packet of a spoofed flood at a first knock port, and
/// what the rule loop would do with it is known: a first step through that
/// rule, kept; its event, within the flood budget; its source's knocking
/// horizon raised. None for any other packet, which the rules then judge.
#[inline(always)]
pub fn plain_first_step(settings: &Settings, handover: &KnockHandover) -> Option<Reason> {
    let packet = &handover.packet;
    let knock_rules = handover.roles.knock_rules;
    if packet.l4.is_echo() || !knock_rules.is_power_of_two() || settings.deny_entries != 0 {
        return None;
    }
    let index = knock_rules.trailing_zeros();
    let rule = settings::rule(index)?;
    let knock = packet.knock();
    if rule.steps < 2 || rule.sequence[0] != knock {
        return None;
    }
    let horizon = horizon::at(handover.slot);
    if horizon.later_steps != 0 {
        return None;
    }
    let now = now_ns();
    if horizon.failing_until > horizon_units(now) {
        return None;
    }
    let first = FirstStepKey::of_rule(
        handover.source_hash,
        settings.first_step_bucket_bits,
        index,
        rule,
    );
    let bucket = bucket(first)?;
    if first.source_in(|way| read_way(bucket, way)) {
        return None;
    }
    FirstStepWrite {
        old: 0,
        new: first.record(now),
        displace: true,
    }
    .commit(Some(bucket), now);
    horizon::raise(settings, handover.slot, Horizon::Knocking, now);
    if events::within_flood_budget(settings) {
        events::emit(&Event::progress(&packet.src(), knock, index, 1));
    }
    Some(Reason::DropKnockAdvanced)
}

/// Hands a packet that may be a knock step to `xknock_knock`, which runs it
/// through every rule and decides it. Returns only if that program is not
/// in place; the knock rules cannot run then, and the caller judges the
/// packet as no knock (a knock port drops it).
#[inline(always)]
pub fn hand_over(ctx: &XdpContext, handover: KnockHandover) {
    if let Some(slot) = KNOCK_HANDOVER.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot, only touched by this CPU while it runs
        // us and the program we hand over to.
        unsafe { *slot = handover };
    }
    // SAFETY: the slot holds an XDP program of this object or nothing.
    unsafe { KNOCK.tail_call(ctx, 0) };
}

/// What one knock-rule step reads; shared with the `bpf_loop` callback
/// through a pointer to the caller's stack. It stays the same at every
/// iteration, so the verifier finds the loop's states equal at once.
struct KnockScan {
    src: Addr,
    /// `source_hash` of `src`, which picks its `FIRST_STEPS` bucket.
    source_hash: u32,
    knock: Knock,
    /// Whether the packet's port is a step of any rule.
    knock_port: bool,
    /// The source's `SOURCE_HORIZONS` slot.
    horizon_slot: u32,
}

/// The verdict the knock rules reached so far on the packet being scanned,
/// per CPU: a `Reason`'s number, or `NO_VERDICT`. It lives in a map, not in
/// `KnockScan`: a verdict on the stack made every iteration's state
/// differ (one per combination of earlier verdicts), and checking them all
/// took the verifier past its million instructions.
#[map]
static KNOCK_VERDICT: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
const NO_VERDICT: u32 = u32::MAX;

/// The verdict reached so far, or none.
#[inline(always)]
fn verdict() -> Option<Reason> {
    Reason::decode(*KNOCK_VERDICT.get(0)?)
}

/// Replaces the verdict reached so far.
#[inline(always)]
fn set_verdict(reason: Option<Reason>) {
    if let Some(slot) = KNOCK_VERDICT.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot, only touched by this CPU while it runs us.
        unsafe { *slot = reason.map_or(NO_VERDICT, |r| r as u32) };
    }
}

/// The grants the knock rules owe the packet being scanned, per CPU: made
/// after the rule loop (`grant_owed`), where the verifier checks a grant's
/// work once, not on every path through a rule that reaches one.
#[map]
static OWED_GRANTS: PerCpuArray<OwedGrants> = PerCpuArray::with_max_entries(1, 0);

#[derive(Clone, Copy)]
struct OwedGrants {
    /// Bit `r`: rule `r` granted.
    rules: u32,
    src: Addr,
    /// When the last of them was made (kernel clock; one packet's rules
    /// run within nanoseconds).
    now: u64,
}

/// Records that rule `rule_index` grants the packet's source, at `now`.
#[inline(always)]
fn owe_grant(rule_index: u32, now: u64) {
    if let Some(owed) = OWED_GRANTS.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot, only touched by this CPU while it runs us.
        let owed = unsafe { &mut *owed };
        owed.now = now;
        owed.rules |= 1 << (rule_index & (MAX_RULES as u32 - 1));
    }
}

/// Makes the grants the rule loop owes `src` (`guard::grant`), each for its
/// rule's `open_for` from when the last was owed.
#[inline(always)]
fn grant_owed(src: Addr) {
    let Some(owed) = OWED_GRANTS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU slot, only touched by this CPU while it runs us.
    let owed = unsafe { &mut *owed };
    if owed.rules == 0 {
        return;
    }
    // On the stack: bpf_loop hands its callback nothing else.
    let grants = OwedGrants { src, ..*owed };
    owed.rules = 0;
    // SAFETY: the callback is a BPF subprogram with the signature bpf_loop
    // expects, and `grants` outlives the call.
    unsafe {
        bpf_loop(
            MAX_RULES as u32,
            grant_step as *mut c_void,
            (&raw const grants).cast_mut().cast(),
            0,
        )
    };
}

/// One owed grant for `bpf_loop`: returns 0 to go on.
#[inline(never)]
extern "C" fn grant_step(rule_index: u64, owed: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer grant_owed gave it.
    let owed = unsafe { &*owed.cast::<OwedGrants>() };
    let rule_index = rule_index as u32;
    if rule_index >= MAX_RULES as u32 || owed.rules & (1 << rule_index) == 0 {
        return 0;
    }
    let (Some(settings), Some(rule)) = (settings::settings(), settings::rule(rule_index)) else {
        return 0;
    };
    let expires_ns = owed.now + rule.open_for_ns;
    guard::grant(settings, &owed.src, rule_index, rule, expires_ns, owed.now);
    0
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
    source_hash: u32,
    knock: Knock,
    knock_port: bool,
    horizon_slot: u32,
) -> Option<Reason> {
    let scan = KnockScan {
        src,
        source_hash,
        knock,
        knock_port,
        horizon_slot,
    };
    set_verdict(None);
    let rules = settings.rules.min(MAX_RULES as u32);
    // SAFETY: the callback is a BPF subprogram with the signature bpf_loop
    // expects, and `scan` outlives the call.
    unsafe {
        bpf_loop(
            rules,
            knock_rule as *mut c_void,
            (&raw const scan).cast_mut().cast(),
            0,
        )
    };
    grant_owed(src);
    verdict()
}

/// One rule's step for `bpf_loop`: returns 0 to go on, 1 to stop.
#[inline(never)]
extern "C" fn knock_rule(rule_index: u64, scan: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer run_knock_rules gave it.
    let scan = unsafe { &*scan.cast::<KnockScan>() };
    let rule_index = rule_index as u32;
    let (Some(settings), Some(rule)) = (settings::settings(), settings::rule(rule_index)) else {
        return 1;
    };
    let key = SourceRule {
        addr: scan.src,
        rule: rule_index,
    };
    let knock = scan.knock;
    let slot = scan.horizon_slot;
    // Read at every rule: an earlier one may have just counted a failure
    // or a later step.
    let horizon = horizon::at(slot);
    let first = FirstStepKey::of_rule(
        scan.source_hash,
        settings.first_step_bucket_bits,
        rule_index,
        rule,
    );
    let bucket = bucket(first);
    let stored = Stored::find(&key, bucket, first, horizon.later_steps != 0);
    // Only a first step may create progress: spoofed noise costs two lookups.
    if stored.is_none() && rule.sequence[0] != knock {
        return 0;
    }
    // Denied and penalized sources do not knock: their packets to knock
    // ports drop, and all else goes on as if they had no progress.
    if guard::denied(settings, &scan.src) {
        set_verdict(scan.knock_port.then_some(Reason::DropDenied));
        return 1;
    }
    let now = now_ns();
    // Past the failing horizon a record of failures is as good as none
    // (counting one more starts afresh either way): no lookup.
    let penalty = if horizon.failing_until > horizon_units(now) {
        PENALTIES.get_ptr_mut(&scan.src)
    } else {
        None
    };
    // SAFETY: a value pointer the map lookup just returned.
    if penalty.is_some_and(|p| now < unsafe { (*p).ignored_until_ns }) {
        set_verdict(scan.knock_port.then_some(Reason::DropPenalized));
        return 1;
    }
    let progress = stored.get(now, rule.sequence_tag);
    let transition = machine::on_packet(rule, progress.as_ref(), knock, scan.knock_port, now);
    // Every change to the first steps' table in one place: the verifier
    // walks its loops once per kind of change, not once per outcome.
    stored
        .change(&key, first, transition.outcome, slot)
        .commit(bucket, now);
    if let Some(cause) = transition.reset {
        events::emit(&Event::reset(&scan.src, knock, rule_index, cause));
        count_failure(settings, slot, penalty, &scan.src, knock, now);
    }
    let reason = match transition.outcome {
        Outcome::Idle => return 0,
        Outcome::Untouched => return 0,
        Outcome::Duplicate => Reason::DropKnockDuplicate,
        Outcome::Advanced(next) => {
            horizon::raise(settings, slot, Horizon::Knocking, now);
            let step = next.next_step as u8;
            // First steps are what a spoofed flood sends: their events share
            // the flood budget; later steps come from real clients.
            if step > 1 || events::within_flood_budget(settings) {
                events::emit(&Event::progress(&scan.src, knock, rule_index, step));
            }
            Reason::DropKnockAdvanced
        }
        Outcome::Granted => {
            if rule.once != 0 && spend(rule_index, rule.sequence_tag, now) {
                events::emit(&Event::reset(
                    &scan.src,
                    knock,
                    rule_index,
                    ResetCause::Spent,
                ));
                count_failure(settings, slot, penalty, &scan.src, knock, now);
                if verdict().is_none() {
                    set_verdict(Some(Reason::DropKnockPort));
                }
                return 0;
            }
            let expires_ns = now + rule.open_for_ns;
            if rule.once & ONCE_HELD != 0 {
                // Spent here; the fleet decides whether it opens.
                events::emit(&Event::held(
                    &scan.src,
                    knock,
                    rule_index,
                    rule.steps as u8,
                    expires_ns,
                ));
                set_verdict(Some(Reason::DropKnockGranted));
                return 0;
            }
            owe_grant(rule_index, now);
            let step = rule.steps as u8;
            events::emit(&Event::grant(
                &scan.src, knock, rule_index, step, expires_ns,
            ));
            Reason::DropKnockGranted
        }
    };
    if reason == Reason::DropKnockGranted || verdict().is_none() {
        set_verdict(Some(reason));
    }
    0
}

/// Whether `key` (a source and a rule) has knock progress stored, in
/// `FIRST_STEPS` or `PROGRESS`: what the trace shows.
#[allow(dead_code, reason = "only the traced object reads it")]
#[inline(always)]
pub fn has_progress(settings: &Settings, key: &SourceRule, source_hash: u32) -> bool {
    // SAFETY: only tests whether the lookup found something.
    if unsafe { PROGRESS.get(key).is_some() } {
        return true;
    }
    let Some(rule) = settings::rule(key.rule) else {
        return false;
    };
    let first = FirstStepKey::of_rule(source_hash, settings.first_step_bucket_bits, key.rule, rule);
    matches!(
        Stored::find(key, bucket(first), first, false),
        Stored::FirstStep(..)
    )
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
    SPENT.insert(&key, &now, BPF_NOEXIST).is_err()
}

/// Where a source's progress through a rule is stored: sources that sent only
/// the first step in `FIRST_STEPS` (the record found in their bucket),
/// sources past it in `PROGRESS`, so a flood of spoofed first steps can only
/// ever displace other first steps. Entries of `PROGRESS` are counted in
/// their source's horizon slot (`later_steps`).
#[derive(Clone, Copy)]
enum Stored {
    Nowhere,
    FirstStep(u64),
    Later(*mut Progress),
}

/// `FIRST_STEPS`'s bucket of `first`, as a pointer to its first way, if
/// the index is in range (it is: the loader sizes the map by the bucket
/// bits it gives the filter).
#[inline(always)]
fn bucket(first: FirstStepKey) -> Option<*mut u64> {
    Some(FIRST_STEPS.get_ptr_mut(first.bucket)?.cast::<u64>())
}

/// Way `way` of `bucket`, read whole (other CPUs write ways with single
/// stores).
#[inline(always)]
fn read_way(bucket: *mut u64, way: usize) -> u64 {
    // SAFETY: the mask keeps the way inside the bucket's array value that
    // the lookup returned; aligned u64 words.
    unsafe { core::ptr::read_volatile(bucket.add(way & (FIRST_STEP_WAYS - 1))) }
}

/// A change to the first steps' table: record `old` (zero: a free way)
/// replaced by `new` in the source's bucket, or, with `displace`, whatever
/// record the bucket gives up for a new first step.
#[derive(Clone, Copy)]
struct FirstStepWrite {
    old: u64,
    new: u64,
    displace: bool,
}

/// No change (1 is no record: a record's top bit is set).
const NO_WRITE: FirstStepWrite = FirstStepWrite {
    old: 1,
    new: 1,
    displace: false,
};

impl FirstStepWrite {
    /// Makes the change in `bucket` at `now`, in one store; nothing if no
    /// way holds the record to replace any more (another CPU's first step
    /// took it meanwhile).
    #[inline(always)]
    fn commit(self, bucket: Option<*mut u64>, now: u64) {
        let Some(bucket) = bucket else {
            return;
        };
        if self.old == self.new {
            return;
        }
        let old = if self.displace {
            displaced(|way| read_way(bucket, way), now)
        } else {
            self.old
        };
        if let Some(way) = way_of(|way| read_way(bucket, way), old) {
            // SAFETY: as in `read_way`.
            unsafe {
                core::ptr::write_volatile(bucket.add(way & (FIRST_STEP_WAYS - 1)), self.new);
            };
        }
    }
}

impl Stored {
    /// Where `key` (whose first step's key is `first`, in `bucket`) is
    /// stored; `PROGRESS` only looked at if `later` (its slot counts
    /// entries there).
    #[inline(always)]
    fn find(
        key: &SourceRule,
        bucket: Option<*mut u64>,
        first: FirstStepKey,
        later: bool,
    ) -> Stored {
        if later && let Some(slot) = PROGRESS.get_ptr_mut(key) {
            return Stored::Later(slot);
        }
        let Some(bucket) = bucket else {
            return Stored::Nowhere;
        };
        match first.find(|way| read_way(bucket, way)) {
            Some(word) => Stored::FirstStep(word),
            None => Stored::Nowhere,
        }
    }

    #[inline(always)]
    fn is_none(self) -> bool {
        matches!(self, Stored::Nowhere)
    }

    /// The progress stored, read at `now` for a rule whose sequence is
    /// tagged `sequence_tag` (a first step's record was found by it).
    #[inline(always)]
    fn get(self, now: u64, sequence_tag: u32) -> Option<Progress> {
        match self {
            Stored::Nowhere => None,
            Stored::FirstStep(word) => Some(record_progress(word, now, sequence_tag)),
            // SAFETY: a value pointer a map lookup returned in this run; LRU
            // values stay valid until the program returns.
            Stored::Later(slot) => Some(unsafe { *slot }),
        }
    }

    /// What `outcome` does to the progress stored for `key` (whose first
    /// step's key is `first`; `horizon_slot` is its source's): `PROGRESS`
    /// is changed here, the change to the first steps' table returned.
    #[inline(always)]
    fn change(
        self,
        key: &SourceRule,
        first: FirstStepKey,
        outcome: Outcome,
        horizon_slot: u32,
    ) -> FirstStepWrite {
        match outcome {
            Outcome::Idle | Outcome::Granted => self.forget(key, horizon_slot),
            Outcome::Advanced(next) => self.keep(key, first, &next, horizon_slot),
            Outcome::Duplicate | Outcome::Untouched => NO_WRITE,
        }
    }

    /// Removes `key` from where it is stored; `horizon_slot` is its
    /// source's.
    #[inline(always)]
    fn forget(self, key: &SourceRule, horizon_slot: u32) -> FirstStepWrite {
        match self {
            Stored::Nowhere => NO_WRITE,
            Stored::FirstStep(word) => FirstStepWrite {
                old: word,
                new: 0,
                displace: false,
            },
            // Only the CPU whose removal took the entry counts it off.
            Stored::Later(_) => {
                if PROGRESS.remove(key).is_ok() {
                    horizon::remove_later_step(horizon_slot);
                }
                NO_WRITE
            }
        }
    }

    /// Stores `next` in the table its step belongs to, moving it if
    /// needed: a first step as `first`'s record, in place of the one found
    /// or of the one the bucket displaces.
    #[inline(always)]
    fn keep(
        self,
        key: &SourceRule,
        first: FirstStepKey,
        next: &Progress,
        horizon_slot: u32,
    ) -> FirstStepWrite {
        let record = first.record(next.started_ns);
        match (self, next.next_step <= 1) {
            (Stored::FirstStep(word), true) => FirstStepWrite {
                old: word,
                new: record,
                displace: false,
            },
            (Stored::Later(slot), false) => {
                // SAFETY: as in `get`; the whole value is overwritten.
                unsafe { *slot = *next };
                NO_WRITE
            }
            (_, true) => {
                let _ = self.forget(key, horizon_slot);
                FirstStepWrite {
                    old: 0,
                    new: record,
                    displace: true,
                }
            }
            (_, false) => {
                let write = self.forget(key, horizon_slot);
                horizon::add_later_step(horizon_slot);
                let _ = PROGRESS.insert(key, next, 0);
                write
            }
        }
    }
}

/// Counts a failed attempt against `src` (of horizon slot `slot`); enough of
/// them within the window start a penalty.
#[inline(always)]
fn count_failure(
    settings: &Settings,
    slot: u32,
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
    // Before the record: a CPU that finds the horizon passed finds no record.
    horizon::raise(settings, slot, Horizon::Failing, now);
    if penalty.is_none() {
        let _ = PENALTIES.insert(src, state, 0);
    }
    if penalized {
        events::emit(&Event::penalized(src, knock, state.ignored_until_ns));
    }
}
