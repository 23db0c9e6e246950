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
 * u = last action ms, j = id of the batch job carrying it (while inprogress, when batched).
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
 *  redis.call costs Redis more than the member it adds (INFO commandstats: the scripts' own
 *  overhead was larger than the commands they ran). Chunked to stay far below Lua's stack limit. */
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
 * will carry these operations ('' when it is each operation's own), ARGV[5..] operation ids
 * Returns one number per id: 1 when created, 0 when the id is taken (also by an earlier id of
 * this same call).
 */
const CREATE = `${PRUNE_OLDEST}${MANY}
local now, op_prefix = ARGV[1], ARGV[2]
local created, scored = {}, {}
for i = 5, #ARGV do
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

/**
 * finish: the one inprogress -> terminal transition, for one or many operations of one
 * connection (a worker records the outcomes of a batch together). A terminal operation never
 * changes again.
 * KEYS[1] inprogress status index, KEYS[2] completed status index, KEYS[3] failed status index,
 * KEYS[4] index
 * ARGV[1] now ms, ARGV[2] retention ms, ARGV[3] operation key prefix, ARGV[4] index ttl ms,
 * then per operation: id, terminal status (completed|failed), errorDetail JSON or ''
 * Returns one number per operation: 1 when this call finished it, 0 when it was already
 * terminal, -1 when it is unknown (expired).
 */
const FINISH = `${PRUNE_OLDEST}${MANY}
local now, retention, op_prefix, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local target_index = { completed = KEYS[2], failed = KEYS[3] }
local results, leaving, entering = {}, {}, { completed = {}, failed = {} }
for i = 5, #ARGV, 3 do
  local id, target, error_json = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local key = op_prefix .. id
  local record = redis.call('HMGET', key, 's', 'c')
  local status = record[1]
  if not status then
    leaving[#leaving + 1] = id
    results[#results + 1] = -1
  elseif status ~= 'inprogress' then
    results[#results + 1] = 0
  else
    if error_json ~= '' then
      redis.call('HSET', key, 's', target, 'u', now, 'e', error_json)
    else
      redis.call('HSET', key, 's', target, 'u', now)
    end
    redis.call('HDEL', key, 'j')
    redis.call('PEXPIRE', key, retention)
    leaving[#leaving + 1] = id
    local scored = entering[target]
    scored[#scored + 1] = record[2] or now -- a record always has c; never fail the whole batch on one
    scored[#scored + 1] = id
    results[#results + 1] = 1
  end
end
zrem_many(KEYS[1], leaving)
for target, scored in pairs(entering) do
  if #scored > 0 then
    zadd_many(target_index[target], scored)
    prune_oldest(target_index[target], op_prefix, 2)
    redis.call('PEXPIRE', target_index[target], ttl)
  end
end
redis.call('PEXPIRE', KEYS[4], ttl)
return results
`;

/**
 * statuses: the status of several operations of one connection, in one call (a worker reads
 * them before running a batch; a pipeline of one HMGET each cost the worker more CPU than the
 * rest of an operation's Redis work).
 * KEYS[1] the connection's inprogress status index (only routes the call to the connection's slot)
 * ARGV[1] operation key prefix, ARGV[2..] operation ids
 * Returns one status per id, '' when the operation does not exist.
 */
const STATUSES = `
local out = {}
for i = 2, #ARGV do
  out[#out + 1] = redis.call('HGET', ARGV[1] .. ARGV[i], 's') or ''
end
return out
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
 * listing there instead (hasMore 0) made live operations behind a long run of expired ones
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
  finish: new Script(FINISH),
  statuses: new Script(STATUSES),
  list: new Script(LIST),
};
