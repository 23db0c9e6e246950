import { createHash } from 'node:crypto';
import type { RedisClient } from './redis.js';

/**
 * The store's Lua scripts: every read-modify-write that must be atomic happens here, in one
 * script per transition. All KEYS of one call share the connection's hash tag (one cluster slot);
 * operation hashes are addressed as ARGV prefix .. id, inside that same tag.
 *
 * Why undeclared keys are safe on a Redis Cluster: the client routes a script by its KEYS, and
 * every operation hash it reaches through ARGV has the same hash tag, so the same slot, so the
 * same node. Redis 7 refuses a script only when an undeclared key is on another node (or, for
 * scripts with a `#!lua` flags line, in another slot); test/cluster.test.ts runs every script on
 * a three-master cluster. The one case it does not cover: while an operator migrates that slot
 * (resharding), an operation hash that already moved answers an error instead of an ASK
 * redirect; the call fails like any Redis error (the API answers 503, a worker retries the job).
 * BullMQ's own scripts address job hashes the same way. (LIST cannot declare its hashes: it
 * learns the ids inside the script.)
 *
 * An operation hash holds: s = status, e = errorDetail JSON (failed only), c = created ms,
 * u = last action ms; k = its kind when a connection's schema PATCH or DELETE made it (`schema`,
 * `deleteConnection`; absent: created by POST); while inprogress also j = id of the batch job
 * carrying it (absent: its own job), a = attempts claimed, h = the holder of the current attempt,
 * l = when its lease expires.
 *
 * A connection record (keys.ts) holds: n = name, ds = description, st = state (draft, ready),
 * c = created ms, sc = the schema JSON last submitted, rs = the schema JSON last provisioned (an
 * update is checked against it), so = the id of its latest schema operation, d = the id of its
 * delete operation while one is inprogress.
 */

/** Removes up to `n` of the oldest index entries whose operation hash has expired. Amortizes
 *  index cleanup over writes, so an index never keeps dead entries forever. */
const PRUNE_OLDEST = `
local function prune_oldest(index, op_prefix, n)
  local oldest = redis.call('ZRANGE', index, 0, n - 1)
  for _, id in ipairs(oldest) do
    if redis.call('EXISTS', op_prefix .. id) == 0 then redis.call('ZREM', index, id) end
  end
end
`;

/** Sorted-set writes of a whole batch go in a few variadic calls, not one per operation: a
 *  redis.call costs Redis more than the member it adds. Chunked to stay far below Lua's stack
 *  limit. */
const MANY = `
local function zadd_many(key, scores_and_members)
  for i = 1, #scores_and_members, 500 do
    redis.call('ZADD', key, unpack(scores_and_members, i, math.min(i + 499, #scores_and_members)))
  end
end
local function zrem_many(key, members)
  for i = 1, #members, 500 do
    redis.call('ZREM', key, unpack(members, i, math.min(i + 499, #members)))
  end
end
`;

/**
 * create: create-if-absent for one or many operations of one connection (the API commits the
 * creates of a batch together, api/create-batcher.ts).
 * KEYS[1] index, KEYS[2] inprogress status index
 * ARGV[1] now ms, ARGV[2] operation key prefix, ARGV[3] index ttl ms, ARGV[4] id of the job that
 * will carry these operations ('' when it is each operation's own), ARGV[5] 'traced' when each
 * id is followed by the traceparent of its create ('' when tracing is off), ARGV[6..] operation
 * ids (and traceparents)
 * Returns one number per id: 1 when created, 0 when the id is taken (also by an earlier id of
 * this same call).
 */
const CREATE = `${PRUNE_OLDEST}${MANY}
local now, op_prefix = ARGV[1], ARGV[2]
local step = ARGV[5] == 'traced' and 2 or 1
local created, scored = {}, {}
for i = 6, #ARGV, step do
  local id = ARGV[i]
  local key = op_prefix .. id
  if redis.call('EXISTS', key) == 1 then
    created[#created + 1] = 0
  else
    if ARGV[4] ~= '' then
      redis.call('HSET', key, 's', 'inprogress', 'c', now, 'u', now, 'j', ARGV[4])
    else
      redis.call('HSET', key, 's', 'inprogress', 'c', now, 'u', now)
    end
    if step == 2 and ARGV[i + 1] ~= '' then redis.call('HSET', key, 'tp', ARGV[i + 1]) end
    scored[#scored + 1] = now
    scored[#scored + 1] = id
    created[#created + 1] = 1
  end
end
if #scored > 0 then
  zadd_many(KEYS[1], scored)
  zadd_many(KEYS[2], scored)
end
prune_oldest(KEYS[1], op_prefix, 2)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return created
`;

/** Redis's own clock in ms: leases are compared against one clock, whichever worker's clock
 *  is off. (Scripts may call TIME since Redis 5 replicates their effects, not the script.) */
const REDIS_MS = `
local function redis_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
`;

/**
 * The terminal transition shared by FINISH, CLAIM, CANCEL and DELETE_CONNECTION, which take the
 * same KEYS and ARGV[1..4]:
 * KEYS[1] inprogress status index, KEYS[2] completed, KEYS[3] failed, KEYS[4] index,
 * KEYS[5] the connection's changes channel (sharded pub/sub; declared as a key so that a cluster
 * routes and checks it like one), KEYS[6] the connection record;
 * ARGV[1] now ms, ARGV[2] retention ms, ARGV[3] operation key prefix, ARGV[4] index ttl ms.
 * `end_operation` writes the record at once; `move_indexes` moves the index entries of every
 * operation ended in this call, in a few variadic calls, and announces them. The claim fields
 * go: a terminal record keeps only s, e, c, u (and k).
 *
 * The end of a schema or delete operation is the connection's too, in the same step, so no crash
 * can leave them disagreeing: a completed schema operation makes the connection ready with that
 * schema provisioned (if it is still the connection's latest), a completed delete removes the
 * record, a failed one leaves the connection as it was. The record is in the operations' slot
 * (keys.ts).
 *
 * The announcement is one SPUBLISH per call, whatever the number of operations it ended: a JSON
 * array of the operations as the store reads them ({id, status, error, createdAt, lastActionAt}),
 * so a waiting request answers from the message without reading Redis again. Published by the
 * script that writes the change, so no change goes unannounced and none is announced before it
 * is stored. Nobody listening costs one SPUBLISH that reaches no one. Ids are safe inside the
 * JSON string as they are (OPERATION_ID_PATTERN), and error_json is JSON already.
 */
const TERMINAL = `${PRUNE_OLDEST}${MANY}
local leaving, entering, announced = {}, { completed = {}, failed = {} }, {}
local function settle_connection(id, target, kind)
  if kind == 'schema' then
    if target == 'completed' and redis.call('HGET', KEYS[6], 'so') == id then
      redis.call('HSET', KEYS[6], 'st', 'ready', 'rs', redis.call('HGET', KEYS[6], 'sc'))
    end
  elseif kind == 'deleteConnection' and redis.call('HGET', KEYS[6], 'd') == id then
    if target == 'completed' then redis.call('DEL', KEYS[6]) else redis.call('HDEL', KEYS[6], 'd') end
  end
end
local function end_operation(key, id, created, target, error_json, kind)
  if kind then settle_connection(id, target, kind) end
  if error_json ~= '' then
    redis.call('HSET', key, 's', target, 'u', ARGV[1], 'e', error_json)
  else
    redis.call('HSET', key, 's', target, 'u', ARGV[1])
  end
  redis.call('HDEL', key, 'j', 'a', 'h', 'l')
  redis.call('PEXPIRE', key, ARGV[2])
  leaving[#leaving + 1] = id
  local scored = entering[target]
  created = created or ARGV[1] -- a record always has c; never fail the whole call on one
  scored[#scored + 1] = created
  scored[#scored + 1] = id
  announced[#announced + 1] = '{"id":"' .. id .. '","status":"' .. target .. '","error":' ..
    (error_json ~= '' and error_json or 'null') .. ',"createdAt":' .. created .. ',"lastActionAt":' .. ARGV[1] .. '}'
end
local function move_indexes()
  zrem_many(KEYS[1], leaving)
  local target_index = { completed = KEYS[2], failed = KEYS[3] }
  for target, scored in pairs(entering) do
    if #scored > 0 then
      zadd_many(target_index[target], scored)
      prune_oldest(target_index[target], ARGV[3], 2)
      redis.call('PEXPIRE', target_index[target], ARGV[4])
    end
  end
  redis.call('PEXPIRE', KEYS[4], ARGV[4])
  if #announced > 0 then redis.call('SPUBLISH', KEYS[5], '[' .. table.concat(announced, ',') .. ']') end
end
-- Tells the worker process that holds an attempt (its token, or nil) that the operation was
-- canceled: on that process's own channel (see CANCEL).
local function tell_holder(holder, channel_prefix)
  local holder_process = holder and string.match(holder, '^([^:]+):')
  if holder_process then redis.call('PUBLISH', channel_prefix .. holder_process, holder) end
end
`;

/**
 * claim: takes the next attempt of one or many operations of one connection, for a job of a
 * worker, before the processor is called. Every attempt goes through here (a batch, a retry job,
 * a re-enqueue by the reconciler, a job redelivered after a crash), so attempts are counted on
 * the operation, whatever carries it.
 * KEYS and ARGV[1..4] as TERMINAL; ARGV[5] lease ms, ARGV[6] attempts allowed in total,
 * ARGV[7] the errorDetail JSON of an operation whose attempts are spent, ARGV[8] the claiming
 * job's id ('' for the operations' own jobs), then per operation: id, holder token.
 * Returns per operation a pair (a claimed schema or delete operation: more, see below):
 *   {'claimed', attempt}   the attempt is this holder's until the lease expires (Redis time)
 *   {'terminal', 0}        completed or failed: the processor must not see it
 *   {'missing', 0}         no record (expired, or never created)
 *   {'elsewhere', 0}       another job carries it now (its batch handed it to its own job)
 *   {'busy', ms}           another holder's lease is live for ms more
 *   {'exhausted', n}       its n attempts are spent without an outcome (the last holder died or
 *                          lost its lease): this call recorded it failed
 * A claimed schema or delete operation, or one created with tracing on, is {'claimed', attempt,
 * kind or '', schema JSON or '', traceparent or ''}: the processor is told what to do (a schema
 * operation provisions the connection's schema), and the attempt continues its create's trace.
 * The record's fields: a = attempts claimed, h = holder token, l = lease expiry (Redis ms),
 * j = the batch job carrying it (absent: its own job), k = its kind, tp = its create's trace.
 */
const CLAIM = `${TERMINAL}${REDIS_MS}
local lease, allowed, exhausted_json, job = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], ARGV[8]
local now_ms = redis_ms()
local out = {}
local function claimed(attempt, kind, traceparent)
  if not kind and not traceparent then return { 'claimed', attempt } end
  local schema = kind == 'schema' and redis.call('HGET', KEYS[6], 'sc') or ''
  return { 'claimed', attempt, kind or '', schema or '', traceparent or '' }
end
for i = 9, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local key = ARGV[3] .. id
  local r = redis.call('HMGET', key, 's', 'j', 'h', 'l', 'a', 'c', 'k', 'tp')
  if not r[1] then
    out[#out + 1] = { 'missing', 0 }
  elseif r[1] ~= 'inprogress' then
    out[#out + 1] = { 'terminal', 0 }
  elseif (r[2] or '') ~= job then
    out[#out + 1] = { 'elsewhere', 0 }
  elseif r[3] == token then
    -- The same claim again (the client resent it after a lost reply): the same attempt.
    out[#out + 1] = claimed(tonumber(r[5]), r[7], r[8])
  elseif r[3] and (tonumber(r[4]) or 0) > now_ms then
    out[#out + 1] = { 'busy', tonumber(r[4]) - now_ms }
  else
    local spent = tonumber(r[5] or '0')
    if spent >= allowed then
      end_operation(key, id, r[6], 'failed', exhausted_json, r[7])
      out[#out + 1] = { 'exhausted', spent }
    else
      redis.call('HSET', key, 'a', spent + 1, 'h', token, 'l', now_ms + lease)
      out[#out + 1] = claimed(spent + 1, r[7], r[8])
    end
  end
end
move_indexes()
return out
`;

/**
 * finish: what an attempt decided, for one or many operations of one connection (a worker
 * writes the outcomes that end in the same tick together). A terminal operation never changes
 * again.
 * KEYS and ARGV[1..4] as TERMINAL, then per operation: id, holder token ('' = unfenced: a write
 * that no attempt makes), outcome, errorDetail JSON or ''. Outcomes:
 *   completed | failed   the terminal transition
 *   retry                the attempt failed and another may follow: the lease is dropped and the
 *                        operation leaves its batch job (the next attempt is its own job's)
 *   interrupted          this worker stopped waiting for the attempt (shutdown): the lease is
 *                        dropped and the attempt given back; the job carrying it runs it again
 * Fencing: a holder whose lease was taken over (another token holds the record) changes nothing.
 * Idempotent, as CLAIM is: ioredis resends a command whose reply a disconnect lost, so a release
 * found already done answers 1 again (and gives no attempt back twice).
 * Returns one number per operation: 1 done, 0 already terminal, -1 unknown (expired),
 * -2 refused: the lease is another holder's.
 */
const FINISH = `${TERMINAL}
local out = {}
for i = 5, #ARGV, 4 do
  local id, token, outcome, error_json = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local key = ARGV[3] .. id
  local r = redis.call('HMGET', key, 's', 'h', 'c', 'k')
  if not r[1] then
    out[#out + 1] = -1
  elseif r[1] ~= 'inprogress' then
    out[#out + 1] = 0
  elseif not r[2] and token ~= '' and (outcome == 'retry' or outcome == 'interrupted') then
    -- Nobody holds it: this release already happened (the client resent it after a lost reply).
    out[#out + 1] = 1
  elseif token ~= '' and r[2] ~= token then
    out[#out + 1] = -2
  else
    if outcome == 'retry' then
      redis.call('HDEL', key, 'h', 'l', 'j')
    elseif outcome == 'interrupted' then
      redis.call('HDEL', key, 'h', 'l')
      redis.call('HINCRBY', key, 'a', -1)
    else
      end_operation(key, id, r[3], outcome, error_json, r[4])
    end
    out[#out + 1] = 1
  end
end
move_indexes()
return out
`;

/**
 * cancel: a client cancels an operation: an inprogress one is failed at once with the given
 * errorDetail, announced like any terminal transition, and the worker process holding an attempt
 * of it (if any) is told on its own channel, so it aborts the processor's signal.
 * KEYS and ARGV[1..4] as TERMINAL; ARGV[5] operation id, ARGV[6] the errorDetail JSON,
 * ARGV[7] prefix of the workers' cancel channels.
 * Returns {'missing'}, or {'canceled' | 'ended', status, errorJson, created, lastAction}: the
 * record this call wrote, or the terminal one it found (the race with a finish has one winner).
 *
 * The worker's channel is classic pub/sub, not sharded: it cannot be in every operation's slot,
 * and a worker keeps one subscription for its life instead of one per connection it works on. On
 * a cluster a classic PUBLISH reaches every node; cancels are rare, so that costs nothing. A
 * holder token is `<process id>:<sequence>` (worker/attempts.ts), which names the channel.
 */
const CANCEL = `${TERMINAL}
local key = ARGV[3] .. ARGV[5]
local r = redis.call('HMGET', key, 's', 'e', 'c', 'u', 'h', 'k')
if not r[1] then return { 'missing' } end
if r[1] ~= 'inprogress' then return { 'ended', r[1], r[2] or '', r[3], r[4] } end
end_operation(key, ARGV[5], r[3], 'failed', ARGV[6], r[6])
move_indexes()
tell_holder(r[5], ARGV[7])
return { 'canceled', 'failed', ARGV[6], r[3] or ARGV[1], ARGV[1] }
`;

/** Adds an inprogress operation of a connection's schema or delete, carried by its own job. */
const ADD_OPERATION = `
local function add_operation(index, inprogress, op_prefix, id, now, kind, traceparent)
  redis.call('HSET', op_prefix .. id, 's', 'inprogress', 'c', now, 'u', now, 'k', kind)
  if traceparent ~= '' then redis.call('HSET', op_prefix .. id, 'tp', traceparent) end
  redis.call('ZADD', index, now, id)
  redis.call('ZADD', inprogress, now, id)
  prune_oldest(index, op_prefix, 2)
end
-- The id of an operation of the connection that is still inprogress, or nil.
local function live(op_prefix, id)
  if id and redis.call('HGET', op_prefix .. id, 's') == 'inprogress' then return id end
  return nil
end
`;

/**
 * create_connection: a tenant's externalConnection, unless its id is taken.
 * KEYS[1] the connection record. ARGV[1] name, ARGV[2] description, ARGV[3] now ms.
 * Returns 1 when created, 0 when it exists.
 */
const CREATE_CONNECTION = `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'n', ARGV[1], 'ds', ARGV[2], 'st', 'draft', 'c', ARGV[3])
return 1
`;

/**
 * submit_schema: a connection's new schema and the operation that provisions it, at once. One
 * provisioning at a time: refused while a schema or delete operation of the connection is
 * inprogress. The connection keeps its state (a ready one stays ready while a new schema
 * provisions); the schema is stored as submitted, so it reads back at once.
 * KEYS[1] the connection record, KEYS[2] index, KEYS[3] inprogress status index
 * ARGV[1] now ms, ARGV[2] operation key prefix, ARGV[3] index ttl ms, ARGV[4] the new
 * operation's id, ARGV[5] the schema JSON, ARGV[6] the id of the latest schema operation when the
 * caller read the provisioned schema it validated the new one against ('' for none), ARGV[7]
 * the traceparent of the request ('' when tracing is off)
 * Returns {'accepted'}, {'missing'}, {'deleting' | 'provisioning', id of that operation}, or
 * {'changed'}: another schema was submitted since that read (validate again).
 */
const SUBMIT_SCHEMA = `${PRUNE_OLDEST}${ADD_OPERATION}
local connection = redis.call('HMGET', KEYS[1], 'st', 'so', 'd')
if not connection[1] then return { 'missing' } end
local deleting = live(ARGV[2], connection[3])
if deleting then return { 'deleting', deleting } end
local provisioning = live(ARGV[2], connection[2])
if provisioning then return { 'provisioning', provisioning } end
if (connection[2] or '') ~= ARGV[6] then return { 'changed' } end
add_operation(KEYS[2], KEYS[3], ARGV[2], ARGV[4], ARGV[1], 'schema', ARGV[7])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('HSET', KEYS[1], 'sc', ARGV[5], 'so', ARGV[4])
return { 'accepted' }
`;

/**
 * delete_connection: the operation that deletes a connection. The delete wins over a schema
 * still provisioning: that operation fails with the given errorDetail (canceled) in this same
 * step, and the worker holding its attempt is told, like a client's cancel. The record stays
 * until the delete operation completes (TERMINAL). A second delete while one is inprogress
 * creates nothing and names the first.
 * KEYS and ARGV[1..4] as TERMINAL; ARGV[5] the new operation's id, ARGV[6] the errorDetail JSON
 * of a canceled schema operation, ARGV[7] prefix of the workers' cancel channels, ARGV[8] the
 * traceparent of the request ('' when tracing is off).
 * Returns {'accepted', id of the schema operation canceled or ''}, {'missing'}, or
 * {'deleting', id of the delete operation inprogress}.
 */
const DELETE_CONNECTION = `${TERMINAL}${ADD_OPERATION}
local connection = redis.call('HMGET', KEYS[6], 'st', 'so', 'd')
if not connection[1] then return { 'missing' } end
local deleting = live(ARGV[3], connection[3])
if deleting then return { 'deleting', deleting } end
add_operation(KEYS[4], KEYS[1], ARGV[3], ARGV[5], ARGV[1], 'deleteConnection', ARGV[8])
redis.call('HSET', KEYS[6], 'd', ARGV[5])
local provisioning = live(ARGV[3], connection[2])
if provisioning then
  local key = ARGV[3] .. provisioning
  local r = redis.call('HMGET', key, 'c', 'h')
  end_operation(key, provisioning, r[1], 'failed', ARGV[6], 'schema')
  tell_holder(r[2], ARGV[7])
end
move_indexes()
return { 'accepted', provisioning or '' }
`;

/**
 * renew: extends the leases a worker holds, for one or many operations of one connection.
 * KEYS[1] the connection's inprogress status index (only routes the call to the connection's slot)
 * ARGV[1] operation key prefix, ARGV[2] lease ms, then per operation: id, holder token.
 * Returns one number per operation: 1 renewed, 0 lost (another holder took the attempt over, or
 * it was given back), -1 ended (the operation is terminal, or gone: a client canceled it).
 */
const RENEW = `${REDIS_MS}
local expires = redis_ms() + tonumber(ARGV[2])
local out = {}
for i = 3, #ARGV, 2 do
  local key = ARGV[1] .. ARGV[i]
  local r = redis.call('HMGET', key, 's', 'h')
  if r[1] ~= 'inprogress' then
    out[#out + 1] = -1
  elseif r[2] == ARGV[i + 1] then
    redis.call('HSET', key, 'l', expires)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
`;

/**
 * hand_over: an operation leaves the batch job that carried it for its own job, only if that
 * batch job still carries it (the reconciler, when the batch job is gone; a worker, when a
 * redelivered batch finds another holder on it).
 * KEYS[1] the operation hash. ARGV[1] the batch job id.
 * Returns 1 when handed over, 0 when another job carries it already or it is not inprogress.
 */
const HAND_OVER = `
if redis.call('HGET', KEYS[1], 's') == 'inprogress' and redis.call('HGET', KEYS[1], 'j') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'j')
  return 1
end
return 0
`;

/**
 * forget_connection: drops a connection from the registry only if no create registered it since
 * `before`. The caller has seen its inprogress index empty; a create registers its connection
 * (a fresh score) before writing, and a registration cached by an API process is seconds old, so
 * a create that races this call either keeps the entry or adds it again.
 * KEYS[1] the registry. ARGV[1] tag, ARGV[2] before ms. Returns 1 when forgotten.
 */
const FORGET_CONNECTION = `
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) < tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
return 0
`;

/**
 * Locks with a holder token: renewed and released only by their holder (the reconciler's sweep).
 * KEYS[1] the lock. ARGV[1] token, ARGV[2] ttl ms (renew only). Returns 1 when done.
 */
const RENEW_LOCK = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
`;
const RELEASE_LOCK = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`;

/**
 * list: one page of an index, newest first (ZRANGE … REV order: score descending, equal scores by
 * id descending, bytewise), skipping (and removing) entries whose operation expired. Cost depends
 * on the page size, not on the index size: ranks are O(log n), and a page scans at most
 * 20 × (page size + 1) entries, its budget (plus one HMGET that finds a full page's successor).
 * KEYS[1] index (all operations, or one status)
 * ARGV[1] operation key prefix, ARGV[2] page size (at least 1), ARGV[3] cursor score or '',
 * ARGV[4] cursor id or ''; the page starts right after the cursor's position, whether or not
 * the cursor's entry is still in the index
 * Returns { hasMore, cursorScore, cursorId, id1, s1, e1, c1, u1, id2, … }. hasMore is 1 when the
 * index may hold entries after this page, and then the cursor is the last entry the page scanned
 * (an operation it returned, or an expired one it skipped); hasMore is 0, with '' '' for the
 * cursor, only when the index has nothing after the page.
 *
 * Why the cursor is the last scanned entry, not the last returned operation: when the budget is
 * spent on expired entries, the page is short (even empty), and only a cursor past those entries
 * lets the next page go on from where this one stopped instead of scanning them again. Ending the
 * listing there instead (hasMore 0) would make live operations behind a long run of expired ones
 * unreachable.
 *
 * The cursor's own entry may be gone when the next page comes: this script removes it if its
 * operation expired, and so may another listing or a create's prune_oldest in between. So
 * finding the position does not rely on the entry: without it, the position is after every
 * higher score and after the equal-score ids greater than the cursor's; a binary search over
 * the equal-score run finds it in O(log n · log run). (Counting only the higher scores would
 * revisit or skip ids of the cursor's millisecond, which many operations can share.)
 */
const LIST = `
local index, op_prefix, size = KEYS[1], ARGV[1], tonumber(ARGV[2])

-- Redis orders equal scores by member bytes (memcmp); Lua's < on strings follows the locale.
local function bytes_less(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

-- The REV rank of the first entry after the position (score, id).
local function rank_after(score, id)
  local rank = redis.call('ZREVRANK', index, id)
  if rank and tonumber(redis.call('ZSCORE', index, id)) == tonumber(score) then return rank + 1 end
  -- Equal scores hold REV ranks lo .. hi - 1, ids descending: find the first id below the cursor's.
  local lo = redis.call('ZCOUNT', index, '(' .. score, '+inf')
  local hi = lo + redis.call('ZCOUNT', index, score, score)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if bytes_less(redis.call('ZRANGE', index, mid, mid, 'REV')[1], id) then hi = mid else lo = mid + 1 end
  end
  return lo
end

local start = 0
if ARGV[3] ~= '' then start = rank_after(ARGV[3], ARGV[4]) end
local budget, scanned, found, dead = 20 * (size + 1), 0, 0, {}
local out, last_score, last_id, beyond = {0, '', ''}, nil, nil, false
while not beyond and scanned < budget do
  local want = math.min(size + 1, budget - scanned)
  local entries = redis.call('ZRANGE', index, start + scanned, start + scanned + want - 1, 'REV', 'WITHSCORES')
  for i = 1, #entries, 2 do
    local id = entries[i]
    local op = redis.call('HMGET', op_prefix .. id, 's', 'e', 'c', 'u')
    if op[1] and found == size then
      beyond = true -- a live operation after a full page: it starts the next one
      break
    end
    scanned = scanned + 1
    last_score, last_id = entries[i + 1], id
    if op[1] then
      found = found + 1
      out[#out + 1] = id
      out[#out + 1] = op[1]
      out[#out + 1] = op[2] or ''
      out[#out + 1] = op[3]
      out[#out + 1] = op[4]
    else
      dead[#dead + 1] = id
    end
  end
  if not beyond and #entries < 2 * want then break end -- the end of the index
end
-- The index is unchanged so far (removals come last): entries remain after rank start + scanned?
if beyond or (scanned == budget and redis.call('ZCARD', index) > start + scanned) then
  out[1], out[2], out[3] = 1, last_score, last_id
end
if #dead > 0 then redis.call('ZREM', index, unpack(dead)) end
return out
`;

export class Script {
  readonly sha: string;
  constructor(readonly source: string) {
    this.sha = createHash('sha1').update(source).digest('hex');
  }

  /** EVAL with the whole source: one send, whatever the node has cached (see createMany). */
  runSource(client: RedisClient, keys: string[], args: (string | number)[]): Promise<unknown> {
    return client.eval(this.source, keys.length, ...keys, ...args);
  }

  /** EVALSHA, falling back to EVAL the first time a Redis node has not seen the script. */
  async run(client: RedisClient, keys: string[], args: (string | number)[]): Promise<unknown> {
    try {
      return await client.evalsha(this.sha, keys.length, ...keys, ...args);
    } catch (error) {
      if (!(error instanceof Error) || !error.message.startsWith('NOSCRIPT')) throw error;
      return client.eval(this.source, keys.length, ...keys, ...args);
    }
  }
}

export const scripts = {
  create: new Script(CREATE),
  claim: new Script(CLAIM),
  finish: new Script(FINISH),
  cancel: new Script(CANCEL),
  renew: new Script(RENEW),
  handOver: new Script(HAND_OVER),
  forgetConnection: new Script(FORGET_CONNECTION),
  renewLock: new Script(RENEW_LOCK),
  releaseLock: new Script(RELEASE_LOCK),
  list: new Script(LIST),
  createConnection: new Script(CREATE_CONNECTION),
  submitSchema: new Script(SUBMIT_SCHEMA),
  deleteConnection: new Script(DELETE_CONNECTION),
};
