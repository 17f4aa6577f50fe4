/**
 * The worker's answers to gateway requests (reads and channel commands). Every
 * request names the user it acts for; gateways take that id from the verified
 * token, so membership is checked here against it.
 */
import { RpcRequestSchema, type Delivery, type RpcRequest, type RpcResponse, type RpcResults } from '../contracts/envelopes.js'
import { compile } from '../contracts/validate.js'
import { requestFingerprint, type ChannelsRepository } from '../db/repositories/channels.js'
import type { MessagesRepository } from '../db/repositories/messages.js'
import { writeWithin, WriteTooSlowError, type WriteDeadline } from '../db/deadline.js'
import { describeDbError, isTransientDbError, sqlState, withDbTimeout } from '../db/errors.js'
import { ClientError } from '../errors.js'
import type { Logger } from '../log.js'

const validateRequest = compile(RpcRequestSchema)

export interface RpcHandlerDeps {
  channels: ChannelsRepository
  messages: MessagesRepository
  /** Publishes a control delivery (joined/left) with confirms. */
  notify: (delivery: Delivery) => Promise<void>
  maxChannelMembers: number
  maxUserGroups: number
  /** Most channels one session.open, channels.list or memberships.list answer may list (MEMBERSHIPS_MAX_CHANNELS). */
  maxListedChannels: number
  dbTimeoutMs: number
  log: Logger
  onDatabaseState: (up: boolean) => void
}

/**
 * How long an answer waits for its announcement at most. Members usually hear of a change
 * before its author's call returns; but the change is committed, and a broker slow to
 * confirm must not push the answer past the caller's timeout (RPC_TIMEOUT_MS): the
 * client would be told UNAVAILABLE, and its retry would create a second channel or be
 * refused a leave it already made. The announcement carries on after the answer.
 */
const ANNOUNCE_WAIT_MS = 2000

/**
 * The database's own answers to a write that ran out of its deadline: statement_timeout,
 * lock_timeout. With WriteTooSlowError, what a slow write looks like; a write that got
 * no connection in time (APP_DB_TIMEOUT alone) is what a dead database looks like, and
 * must still report it down.
 */
const RAN_OUT_OF_TIME = new Set(['57014', '55P03'])

function announced (announcement: Promise<unknown>, waitMs: number): Promise<unknown> {
  let timer: NodeJS.Timeout | undefined
  return Promise.race([announcement, new Promise((resolve) => { timer = setTimeout(resolve, Math.max(0, Math.min(ANNOUNCE_WAIT_MS, waitMs))) })])
    .finally(() => clearTimeout(timer))
}

/**
 * What a write leaves of the caller's timeout for its commit, the answer's way back, and
 * clocks that differ (the time the request waited is measured against the caller's):
 * 1 s of 5.
 */
export const answerMarginMs = (callerTimeoutMs: number) => Math.min(1000, Math.floor(callerTimeoutMs / 5))

/** What the worker knows of the caller (the gateway) of one request. */
export interface RpcCaller {
  /** How long the caller waits for the answer in all, from the request's header. */
  timeoutMs?: number
  /** How long ago the caller sent the request (in the queue, in this worker's prefetch). */
  waitedMs?: number
}

export function createRpcHandler (deps: RpcHandlerDeps) {
  // Only the database's part is timed: a slow announce after a committed change must not
  // turn it into "storage unavailable" (a retried create would make a second channel).
  const db = <T>(work: Promise<T>): Promise<T> => withDbTimeout(work, deps.dbTimeoutMs)

  /**
   * A write commits before its caller gives up or not at all, so that UNAVAILABLE (from
   * the worker or from the gateway's timer) always means nothing changed and a retry is
   * safe. `answerBy` is when the answer must leave.
   */
  const write = async <T>(answerBy: number, run: (deadline: WriteDeadline) => Promise<T>): Promise<T> => {
    const callerMs = answerBy - Date.now()
    try {
      return await writeWithin(Math.min(deps.dbTimeoutMs, callerMs), run)
    } catch (err) {
      // Out of the caller's time, shorter than DB_TIMEOUT_MS, with the database answering:
      // a lock another create holds, a request that waited long in the queue. Not the
      // database down: readiness stays.
      if (callerMs < deps.dbTimeoutMs && (err instanceof WriteTooSlowError || RAN_OUT_OF_TIME.has(sqlState(err) ?? ''))) {
        throw new ClientError('UNAVAILABLE', 'the change could not be made in time and was rolled back; retry shortly', { cause: err })
      }
      throw err
    }
  }

  /** How long this request has for its answer to reach the caller in time; < 1: no time. */
  const budgetMs = (caller: RpcCaller) => caller.timeoutMs === undefined
    ? deps.dbTimeoutMs + ANNOUNCE_WAIT_MS
    : caller.timeoutMs - (caller.waitedMs ?? 0) - answerMarginMs(caller.timeoutMs)

  async function execute (req: RpcRequest, caller: RpcCaller): Promise<RpcResults[RpcRequest['op']]> {
    const budget = budgetMs(caller)
    // Its caller has given up or is about to: a write now could commit behind the
    // UNAVAILABLE the caller was told. Reads are answered anyway: the wait is measured
    // across two clocks, and a worker clock seconds ahead must not refuse every session
    // open and history page (an answer nobody waits for costs only itself).
    const isWrite = req.op === 'channel.create' || req.op === 'channel.leave'
    if (isWrite && budget < 1) throw new ClientError('UNAVAILABLE', 'the request waited past its caller\'s timeout; nothing was done')
    const answerBy = Date.now() + budget
    switch (req.op) {
      case 'session.open':
      case 'channels.list':
        return { channels: await db(deps.channels.listForUser(req.userId, deps.maxListedChannels)) }
      case 'memberships.list':
        return { memberships: await db(deps.channels.listForUsers(req.userIds, deps.maxListedChannels)) }
      case 'channels.seq':
        return { seqs: await db(deps.channels.seqsForUser(req.userId, req.channelIds)) }
      case 'history.fetch':
        return { messages: await db(deps.messages.history(req.userId, req)) }
      case 'channel.create': {
        if (req.memberIds.length > deps.maxChannelMembers) {
          throw new ClientError('VALIDATION', `a channel may name at most ${deps.maxChannelMembers} members`)
        }
        // A request run again (handed back by the broker, or retried by the client with its
        // requestId) answers the channel the first run made and announces it again, in case
        // the first run's announcements were lost with its connection.
        const request = req.requestId === undefined ? undefined : { requestId: req.requestId, fingerprint: requestFingerprint(req.op, [req.name, req.memberIds]) }
        const { channel, memberIds, replayed } = await write(answerBy, (deadline) => deps.channels.createGroup(req.userId, req.name, req.memberIds, deps.maxUserGroups, deadline, request))
        deps.onDatabaseState(true)
        // Every member's gateways bind channel:{id} and tell their sockets. A failure here
        // leaves the channel usable: members see it at their next session:ready.
        await announced(Promise.all(memberIds.map((userId) => deps.notify({ t: 'joined', userId, channel })))
          .catch((err: unknown) => deps.log.warn({ err, channelId: channel.id }, 'could not announce a new channel')), answerBy - Date.now())
        return replayed && !memberIds.includes(req.userId) ? { channel, left: true } : { channel }
      }
      case 'channel.leave':
        await write(answerBy, (deadline) => deps.channels.leave(req.channelId, req.userId, deadline,
          req.requestId === undefined ? undefined : { requestId: req.requestId, fingerprint: requestFingerprint(req.op, [req.channelId]) }))
        deps.onDatabaseState(true)
        await announced(deps.notify({ t: 'left', userId: req.userId, channelId: req.channelId })
          .catch((err: unknown) => deps.log.warn({ err, channelId: req.channelId }, 'could not announce a channel leave')), answerBy - Date.now())
        return {}
    }
  }

  /** Never throws: every outcome is a response. */
  return async function handle (body: unknown, caller: RpcCaller = {}): Promise<{ op: string, response: RpcResponse }> {
    const checked = validateRequest(body)
    if (!checked.ok) return { op: 'invalid', response: { ok: false, error: { code: 'VALIDATION', message: checked.reason } } }
    const req = checked.value
    try {
      const result = await execute(req, caller)
      deps.onDatabaseState(true)
      return { op: req.op, response: { ok: true, result } }
    } catch (err) {
      if (err instanceof ClientError) return { op: req.op, response: { ok: false, error: err.toJSON() } }
      if (isTransientDbError(err)) {
        deps.onDatabaseState(false)
        deps.log.warn({ err: describeDbError(err), op: req.op }, 'database unavailable for a request')
        return { op: req.op, response: { ok: false, error: { code: 'UNAVAILABLE', message: 'storage is unavailable; retry shortly' } } }
      }
      deps.log.error({ err: describeDbError(err), op: req.op }, 'request failed')
      return { op: req.op, response: { ok: false, error: { code: 'INTERNAL', message: 'internal error' } } }
    }
  }
}
