/**
 * The worker's answers to gateway requests (reads and channel commands). Every
 * request names the user it acts for; gateways take that id from the verified
 * token, so membership is checked here against it.
 */
import { RpcRequestSchema, type Delivery, type RpcRequest, type RpcResponse, type RpcResults } from '../contracts/envelopes.js'
import { compile } from '../contracts/validate.js'
import type { ChannelsRepository } from '../db/repositories/channels.js'
import type { MessagesRepository } from '../db/repositories/messages.js'
import { describeDbError, isTransientDbError, withDbTimeout } from '../db/errors.js'
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
  dbTimeoutMs: number
  log: Logger
  onDatabaseState: (up: boolean) => void
}

/**
 * How long an answer waits for its announcement. Members usually hear of a change before
 * its author's call returns; but the change is committed, and a broker slow to confirm
 * must not push the answer past the gateway's RPC_TIMEOUT_MS (5 s by default): the
 * client would be told UNAVAILABLE, and its retry would create a second channel or be
 * refused a leave it already made. The announcement carries on after the answer.
 */
const ANNOUNCE_WAIT_MS = 2000

function announced (announcement: Promise<unknown>): Promise<unknown> {
  let timer: NodeJS.Timeout | undefined
  return Promise.race([announcement, new Promise((resolve) => { timer = setTimeout(resolve, ANNOUNCE_WAIT_MS) })])
    .finally(() => clearTimeout(timer))
}

export function createRpcHandler (deps: RpcHandlerDeps) {
  // Only the database's part is timed: a slow announce after a committed change must not
  // turn it into "storage unavailable" (a retried create would make a second channel).
  const db = <T>(work: Promise<T>): Promise<T> => withDbTimeout(work, deps.dbTimeoutMs)

  async function execute (req: RpcRequest): Promise<RpcResults[RpcRequest['op']]> {
    switch (req.op) {
      case 'session.open':
      case 'channels.list':
        return { channels: await db(deps.channels.listForUser(req.userId)) }
      case 'memberships.list':
        return { memberships: await db(deps.channels.listForUsers(req.userIds)) }
      case 'channels.seq':
        return { seqs: await db(deps.channels.seqsForUser(req.userId, req.channelIds)) }
      case 'history.fetch':
        return { messages: await db(deps.messages.history(req.userId, req)) }
      case 'channel.create': {
        if (req.memberIds.length > deps.maxChannelMembers) {
          throw new ClientError('VALIDATION', `a channel may name at most ${deps.maxChannelMembers} members`)
        }
        const { channel, memberIds } = await db(deps.channels.createGroup(req.userId, req.name, req.memberIds, deps.maxUserGroups))
        deps.onDatabaseState(true)
        // Every member's gateways bind channel:{id} and tell their sockets. A failure here
        // leaves the channel usable: members see it at their next session:ready.
        await announced(Promise.all(memberIds.map((userId) => deps.notify({ t: 'joined', userId, channel })))
          .catch((err: unknown) => deps.log.warn({ err, channelId: channel.id }, 'could not announce a new channel')))
        return { channel }
      }
      case 'channel.leave':
        await db(deps.channels.leave(req.channelId, req.userId))
        deps.onDatabaseState(true)
        await announced(deps.notify({ t: 'left', userId: req.userId, channelId: req.channelId })
          .catch((err: unknown) => deps.log.warn({ err, channelId: req.channelId }, 'could not announce a channel leave')))
        return {}
    }
  }

  /** Never throws: every outcome is a response. */
  return async function handle (body: unknown): Promise<{ op: string, response: RpcResponse }> {
    const checked = validateRequest(body)
    if (!checked.ok) return { op: 'invalid', response: { ok: false, error: { code: 'VALIDATION', message: checked.reason } } }
    const req = checked.value
    try {
      const result = await execute(req)
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
