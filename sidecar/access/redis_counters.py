"""The same windows and admissions in Redis, shared by every instance.

Lua runs atomically in Redis and reads Redis's own clock, so instances with skewed clocks agree. An
admission touches several keys in one script (the key's admissions, windows and epoch, and the
owners' heartbeats), so it needs one Redis primary, not a Redis Cluster spread over slots. The
admission script only reads, compares with the bounds ``admission.py`` computed, and writes.
"""

from __future__ import annotations

import logging

from sidecar.access.admission import Ask, KeyState, Orphan, Refusal, of_store
from sidecar.core.errors import ServiceUnavailable

log = logging.getLogger("sidecar.access.limits")

_NOW = "local t = redis.call('TIME'); local now = tonumber(t[1]) + tonumber(t[2]) / 1000000\n"
_SUM = """
local function window_sum(key, window)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local entries = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  local used, oldest = 0, false
  for i = 1, #entries, 2 do
    used = used + tonumber(string.match(entries[i], ':(%d+)$') or '1')  -- an rpm entry (a bare id) weighs one
    if not oldest then oldest = entries[i + 1] end
  end
  return used, oldest
end
"""
_TOTAL = _NOW + _SUM + """
local used, oldest = window_sum(KEYS[1], tonumber(ARGV[1]))
return {used, oldest}
"""
# The storage steps of ``LocalCounters.admit``: read the counters the ask is counted in, compare each
# with its bound (first over it: its 1-based index, nothing written), else write the admission.
# KEYS: epoch, admissions of the key, tpm window, rpm window, owners, records, index.
# ARGV: id, owner, cost, tokens, record, window, key, then the bounds as (counter, most) pairs.
# An admission is the hash field id -> "amount|tokens|inflight|settled|owner|tpm member".
_ADMIT = _NOW + _SUM + """
local id, owner, cost, tokens, record, window = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local counted = {}
for i = 8, #ARGV, 2 do counted[ARGV[i]] = true end
local state, oldest = {epoch = 0, held = 0, tpm = 0, inflight = 0, rpm = 0}, {tpm = '', rpm = ''}
if counted.epoch then state.epoch = tonumber(redis.call('GET', KEYS[1]) or '0') end
if counted.held or counted.inflight then
  for _, value in ipairs(redis.call('HVALS', KEYS[2])) do
    local amount, _t, live, _s, holder = string.match(value, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)')
    state.held = state.held + tonumber(amount)
    if counted.inflight and live == '1' then
      local beat = redis.call('ZSCORE', KEYS[5], holder)
      if beat and tonumber(beat) > now then state.inflight = state.inflight + 1 end
    end
  end
end
if counted.tpm then
  local used, first = window_sum(KEYS[3], window)
  state.tpm, oldest.tpm = used, first or ''
end
if counted.rpm then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - window)
  state.rpm = redis.call('ZCARD', KEYS[4])
  oldest.rpm = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')[2] or ''
end
local over = 0
for i = 8, #ARGV, 2 do
  if state[ARGV[i]] > tonumber(ARGV[i + 1]) then over = (i - 6) / 2; break end
end
if over == 0 then
  if counted.rpm then
    redis.call('ZADD', KEYS[4], now, id)
    redis.call('PEXPIRE', KEYS[4], math.ceil(window * 1000))
  end
  local member = ''
  if counted.tpm and tokens > 0 then
    member = id .. ':' .. tokens
    redis.call('ZADD', KEYS[3], now, member)
    redis.call('PEXPIRE', KEYS[3], math.ceil(window * 1000))
  end
  redis.call('HSET', KEYS[2], id, cost .. '|' .. tokens .. '|1|0|' .. owner .. '|' .. member)
  redis.call('HSET', KEYS[6], id, record)
  redis.call('HSET', KEYS[7], id, ARGV[7])
end
-- Floats as text: a Lua number in a reply is cut to an integer, and tostring keeps only 14 digits.
local function exact(x) return string.format('%.17g', x) end
return {over, exact(now), state.epoch, exact(state.held), state.tpm, oldest.tpm, state.inflight, state.rpm, oldest.rpm}
"""
# KEYS: admissions of the key, tpm window. ARGV: id, cost, tokens, tpm ('1' or ''), window.
_SETTLE = _NOW + """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return 0 end
local _a, _t, _l, _s, owner, member = string.match(value, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$')
local tokens = tonumber(ARGV[3])
local new = ''
if ARGV[4] == '1' then
  local score = member ~= '' and redis.call('ZSCORE', KEYS[2], member)
  if score then
    redis.call('ZREM', KEYS[2], member)
    if tokens > 0 then new = ARGV[1] .. ':' .. tokens; redis.call('ZADD', KEYS[2], score, new) end
  elseif member == '' and tokens > 0 then
    new = ARGV[1] .. ':' .. tokens
    redis.call('ZADD', KEYS[2], now, new)
    redis.call('PEXPIRE', KEYS[2], math.ceil(tonumber(ARGV[5]) * 1000))
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. tokens .. '|0|1|' .. owner .. '|' .. new)
return 1
"""

_FREE = """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return 0 end
local amount, tokens, _live, rest = string.match(value, '^([^|]*)|([^|]*)|([^|]*)|(.*)$')
redis.call('HSET', KEYS[1], ARGV[1], amount .. '|' .. tokens .. '|0|' .. rest)
return 1
"""


class RedisCounters:
    """Windows and admissions in Redis; one round trip per operation."""

    def __init__(self, url: str, prefix: str = "mistral-sidecar:"):
        import redis

        self.redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self.errors = (redis.exceptions.RedisError,)
        self.prefix = prefix
        self._total, self._admit, self._settle, self._free = (
            self.redis.register_script(s) for s in (_TOTAL, _ADMIT, _SETTLE, _FREE))
        self._owners, self._records, self._index = prefix + "owners", prefix + "admission-records", prefix + "admissions"

    def probe(self) -> str | None:
        """The readiness probe: None when Redis answers a PING, else why not."""
        try:
            self.redis.ping()
        except self.errors as exc:
            return f"Redis does not answer: {type(exc).__name__}"
        return None

    def _run(self, script, keys, args):
        try:
            return script(keys=keys, args=args)
        except self.errors as exc:
            raise ServiceUnavailable(f"The shared rate limiter (Redis) is unavailable: {type(exc).__name__}.",
                                     code="limiter_unavailable") from None

    def _call(self, script, name: str, args):
        return self._run(script, [self.prefix + name], args)

    def total(self, name: str, window: float) -> tuple[int, float | None]:
        used, oldest = self._call(self._total, name, [window])
        return int(used), (float(oldest) if oldest else None)

    # -- admissions -------------------------------------------------------------------------------------
    def _keys(self, key: str) -> list[str]:
        p = self.prefix
        return [f"{p}epoch:{key}", f"{p}admitted:{key}", f"{p}tpm:{key}", f"{p}rpm:{key}",
                self._owners, self._records, self._index]

    def admit(self, ask: Ask, *, window: float) -> Refusal | None:
        """``LocalCounters.admit`` in one script, so one round trip: the script compares the counters with
        ``ask.bounds()``, and the ask says what the first one over its bound means."""
        bounds = ask.bounds()
        args = [ask.id, ask.owner, repr(ask.cost), ask.tokens, ask.record, window, ask.key]
        for bound in bounds:
            args += [bound.counter.value, repr(float(bound.most))]
        over, now, epoch, held, tpm, tpm_oldest, inflight, rpm, rpm_oldest = self._run(
            self._admit, self._keys(ask.key), args)
        if not over:
            return None
        state = KeyState(float(now), int(epoch), float(held), int(tpm), _seconds(tpm_oldest), int(inflight),
                         int(rpm), _seconds(rpm_oldest))
        return ask.refusal(bounds[over - 1].counter, state, window)

    def settle(self, admission: str, cost: float, tokens: int, tpm: bool, window: float) -> None:
        key = self._key_of(admission)
        if key is not None:
            self._run(self._settle, [f"{self.prefix}admitted:{key}", f"{self.prefix}tpm:{key}"],
                      [admission, repr(cost), int(tokens), "1" if tpm else "", window])

    def _key_of(self, admission: str) -> str | None:
        try:
            key = self.redis.hget(self._index, admission)
        except self.errors as exc:
            log.warning("could not settle admission %s: %s", admission, type(exc).__name__)
            return None
        return key.decode() if key is not None else None

    def _drop(self, pipe, admission: str, key: str) -> None:
        pipe.hdel(f"{self.prefix}admitted:{key}", admission)
        pipe.hdel(self._records, admission)
        pipe.hdel(self._index, admission)

    def free(self, admission: str) -> None:
        key = self._key_of(admission)
        if key is not None:
            self._run(self._free, [f"{self.prefix}admitted:{key}"], [admission])

    def recorded(self, admissions: list[str], keys: set[str]) -> None:
        keys_of = dict(zip(admissions, self.redis.hmget(self._index, admissions), strict=True)) if admissions else {}
        pipe = self.redis.pipeline()
        for admission, key in keys_of.items():
            if key is not None:
                self._drop(pipe, admission, key.decode())
        for key in keys:
            pipe.incr(f"{self.prefix}epoch:{key}")
        pipe.execute()

    def bump(self, key: str) -> None:
        self.redis.incr(f"{self.prefix}epoch:{key}")

    # -- owners and the sweep ---------------------------------------------------------------------------
    def beat(self, owner: str, pid: int, host: str, ttl: float) -> None:
        (seconds, micros) = self.redis.time()
        pipe = self.redis.pipeline()
        pipe.zadd(self._owners, {owner: seconds + micros / 1e6 + ttl})
        pipe.hset(self._owners + ":where", owner, f"{pid}|{host}")
        pipe.execute()

    def leave(self, owner: str) -> None:
        pipe = self.redis.pipeline()
        pipe.zrem(self._owners, owner)
        pipe.hdel(self._owners + ":where", owner)
        pipe.execute()

    def sweep(self, *, host: str, grace: float, alive, mine: str = "", store: str = "") -> list[Orphan]:
        """``LocalCounters.sweep``: admissions of owners that stopped beating, claimed one by one (HDEL
        answers 1 to exactly one sweeper)."""
        (seconds, micros) = self.redis.time()
        now = seconds + micros / 1e6
        index = self.redis.hgetall(self._index)
        claimed: list[Orphan] = []
        beats: dict[str, float | None] = {}
        for raw_id, raw_key in index.items():
            admission, key = raw_id.decode(), raw_key.decode()
            value = self.redis.hget(f"{self.prefix}admitted:{key}", admission)
            if value is None:
                continue
            amount, tokens, _live, settled, owner, _member = value.decode().split("|", 5)
            if owner == mine:
                continue
            if owner not in beats:
                beats[owner] = self.redis.zscore(self._owners, owner)
            beat = beats[owner]
            where = self.redis.hget(self._owners + ":where", owner)
            pid, _, owner_host = where.decode().partition("|") if where else ("0", "", "")
            if beat is not None and beat > now and owner_host != host:
                continue
            if not (beat is None or beat <= now - grace or (owner_host == host and not alive(int(pid)))):
                continue
            record = self.redis.hget(self._records, admission)
            if record is not None and not of_store(record.decode(), store):
                continue  # another database's sidecar shares this Redis: its own sweep records it
            if self.redis.hdel(f"{self.prefix}admitted:{key}", admission):
                self.redis.hdel(self._records, admission)
                self.redis.hdel(self._index, admission)
                claimed.append(Orphan(admission, key, float(amount), int(tokens), settled == "1",
                                      record.decode() if record else "{}"))
        return claimed


def _seconds(text: bytes) -> float | None:
    return float(text) if text else None
