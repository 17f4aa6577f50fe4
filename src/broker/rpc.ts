/**
 * Gateway → worker requests over RabbitMQ with direct reply-to. The gateway holds
 * no database connection; every read (channel list, history) and channel command
 * is one of these calls.
 */
import type { Connection, RPCClient } from 'rabbitmq-client'
import type { RpcOp, RpcRequest, RpcResponse, RpcResults } from '../contracts/envelopes.js'
import { ClientError } from '../errors.js'
import { ROUTE_RPC, type BrokerNames } from './topology.js'

export class WorkerRpc {
  readonly #client: RPCClient
  readonly #exchange: string
  #closing: Promise<void> | undefined

  readonly #refuse: () => string | undefined

  /**
   * @param refuse why requests cannot be sent now (e.g. the connection is blocked by a
   *   broker alarm, where rabbitmq-client would hold them in memory past their timeout)
   */
  constructor (connection: Connection, names: BrokerNames, timeoutMs: number, refuse: () => string | undefined = () => undefined) {
    this.#refuse = refuse
    // Requests expire in the queue after timeoutMs, so a late worker never does stale work.
    this.#client = connection.createRPCClient({ confirm: true, timeout: timeoutMs, maxAttempts: 1 })
    this.#exchange = names.incoming
  }

  /**
   * @throws ClientError: the worker's own refusal (FORBIDDEN, NOT_FOUND, VALIDATION…),
   *   or UNAVAILABLE when the broker or every worker is unreachable.
   */
  async call<O extends RpcOp> (request: Extract<RpcRequest, { op: O }>): Promise<RpcResults[O]> {
    if (this.#closing !== undefined) throw new ClientError('UNAVAILABLE', 'gateway is shutting down')
    const refused = this.#refuse()
    if (refused !== undefined) throw new ClientError('UNAVAILABLE', refused)
    let reply
    try {
      reply = await this.#client.send({ exchange: this.#exchange, routingKey: ROUTE_RPC, mandatory: false }, request)
    } catch (cause) {
      throw new ClientError('UNAVAILABLE', 'the chat service is unavailable; retry shortly', { cause })
    }
    const body = reply.body as RpcResponse<O> | undefined
    if (body === undefined || typeof body !== 'object' || body === null || typeof body.ok !== 'boolean') {
      throw new ClientError('INTERNAL', 'malformed reply from worker')
    }
    if (!body.ok) throw new ClientError(body.error.code, body.error.message)
    return body.result
  }

  /** Idempotent. */
  close (): Promise<void> {
    this.#closing ??= this.#client.close()
    return this.#closing
  }
}
