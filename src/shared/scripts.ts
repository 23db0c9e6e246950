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
 * list: one page of an index, newest first, skipping (and removing) entries whose operation
 * expired. Cost depends on the page size, not on the index size (ranks are O(log n)).
 * KEYS[1] index (all operations, or one status)
 * ARGV[1] operation key prefix, ARGV[2] page size, ARGV[3] cursor score or '',
 * ARGV[4] cursor id or ''
 * Returns { hasMore, id1, s1, e1, c1, u1, id2, … }.
 */
const LIST = `
local index, op_prefix, size = KEYS[1], ARGV[1], tonumber(ARGV[2])
local start = 0
if ARGV[3] ~= '' then
  local rank = redis.call('ZREVRANK', index, ARGV[4])
  if rank and tonumber(redis.call('ZSCORE', index, ARGV[4])) == tonumber(ARGV[3]) then
    start = rank + 1
  else
    start = redis.call('ZCOUNT', index, '(' .. ARGV[3], '+inf')
  end
end
local out, found, dead = {0}, 0, {}
for _ = 1, 20 do
  local want = size + 1 - found
  local ids = redis.call('ZRANGE', index, start, start + want - 1, 'REV')
  if #ids == 0 then break end
  start = start + #ids
  for _, id in ipairs(ids) do
    local op = redis.call('HMGET', op_prefix .. id, 's', 'e', 'c', 'u')
    if not op[1] then
      dead[#dead + 1] = id
    elseif found < size then
      found = found + 1
      out[#out + 1] = id
      out[#out + 1] = op[1]
      out[#out + 1] = op[2] or ''
      out[#out + 1] = op[3]
      out[#out + 1] = op[4]
    else
      out[1] = 1
      break
    end
  end
  if out[1] == 1 or #ids < want then break end
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
