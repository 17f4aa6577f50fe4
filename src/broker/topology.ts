/**
 * Names and declarations of every exchange and queue, derived from one prefix.
 * Gateways and workers declare the same durable topology with the same arguments
 * (a mismatch would be a PRECONDITION_FAILED), so whichever starts first creates it
 * and a send is never confirmed into an exchange with no queue behind it.
 */
import type { Cmd, Connection, MethodParams } from 'rabbitmq-client'

export type BrokerNames = ReturnType<typeof brokerNames>

export function brokerNames (prefix: string) {
  return {
    /** Durable direct exchange every client write goes to. */
    incoming: `${prefix}.incoming`,
    /** Durable direct exchange routed by `user:{id}` and `channel:{id}` bindings. */
    outgoing: `${prefix}.outgoing`,
    /**
     * Durable quorum queue of one shard of the sends (src/broker/shards.ts), consumed by
     * one worker at a time. Shard 0 keeps the name of the single queue of old, so going
     * from one shard to several keeps the queue that holds the backlog.
     */
    sendQueue: (shard: number) => shard === 0 ? `${prefix}.worker` : `${prefix}.worker.${shard}`,
    /** Durable queue of reads and channel commands (RPC with direct reply-to). */
    rpcQueue: `${prefix}.worker.rpc`,
    /** Where messages the worker can never process go, with the reason in a header. */
    deadLetterExchange: `${prefix}.dead-letter`,
    deadLetterQueue: `${prefix}.dead-letter`,
    /**
     * A gateway's route (an auto-delete topic exchange bound with its `user:`/`channel:`
     * keys, feeding its queue), the route's holder exchange, the lease queue that keeps
     * both through short outages, and the exchange its queue dead-letters drops to. `id`
     * must be unique per process: a restarted gateway must not adopt its predecessor's keys.
     */
    gatewayRoute: (id: string) => ({
      exchange: `${prefix}.gateway.${id}`,
      holder: `${prefix}.gateway.${id}.holder`,
      lease: `${prefix}.gateway.${id}.lease`,
      /** Auto-delete direct exchange to which the gateway's full queue dead-letters what it drops. */
      drops: `${prefix}.gateway.${id}.drops`
    })
  }
}

/** Routing keys on the incoming exchange. */
export const ROUTE_SEND = 'message.send'
/** The routing key of one send shard; shard 0 keeps the key of the single queue of old. */
export const sendRoute = (shard: number) => shard === 0 ? ROUTE_SEND : `${ROUTE_SEND}.${shard}`
export const ROUTE_RPC = 'rpc'
export const ROUTE_DEAD = 'dead'

/**
 * Routing keys on the outgoing exchange. The prefixes keep the namespaces apart: a user
 * whose id is "channel:5" has the key "user:channel:5", never "channel:5".
 */
export const userKey = (userId: string) => `user:${userId}`
export const channelKey = (channelId: string) => `channel:${channelId}`
export const keyKind = (key: string): 'user' | 'channel' => key.startsWith('user:') ? 'user' : 'channel'

/**
 * Redeliveries before a send is dead-lettered by the broker itself. The worker
 * normally decides earlier (it dead-letters poison with a reason and never
 * nacks a message for a transient failure); this is the backstop for crash loops.
 */
export const WORKER_DELIVERY_LIMIT = 20

export function exchangeDeclarations (n: BrokerNames): Array<MethodParams[Cmd.ExchangeDeclare]> {
  return [
    { exchange: n.incoming, type: 'direct', durable: true },
    { exchange: n.outgoing, type: 'direct', durable: true },
    { exchange: n.deadLetterExchange, type: 'direct', durable: true }
  ]
}

type QueueSpec = {
  queue: string
  options: Omit<MethodParams[Cmd.QueueDeclare], 'queue'>
  bindings: Array<MethodParams[Cmd.QueueBind]>
}

function sendQueueSpec (n: BrokerNames, shard: number): QueueSpec {
  const queue = n.sendQueue(shard)
  return {
    queue,
    options: {
      durable: true,
      arguments: {
        'x-queue-type': 'quorum',
        'x-dead-letter-exchange': n.deadLetterExchange,
        'x-dead-letter-routing-key': ROUTE_DEAD,
        'x-delivery-limit': WORKER_DELIVERY_LIMIT,
        // One worker consumes a shard at a time (the others stand by), so a shard's
        // messages are stored in queue order and a sender's messages keep their order in seq.
        'x-single-active-consumer': true
      }
    },
    bindings: [{ queue, exchange: n.incoming, routingKey: sendRoute(shard) }]
  }
}

/** A queue's declaration, as queueDeclare and rabbitmq-client's topologies take it. */
export const queueDeclaration = (spec: QueueSpec) => ({ ...spec.options, queue: spec.queue })

/** Every durable queue: `shards` send queues, the RPC queue and the dead-letter queue. */
export function queueSpecs (n: BrokerNames, shards: number): { sends: QueueSpec[], rpc: QueueSpec, deadLetter: QueueSpec } {
  return {
    sends: Array.from({ length: shards }, (_, shard) => sendQueueSpec(n, shard)),
    // Requests carry a per-message expiration equal to the caller's timeout.
    rpc: {
      queue: n.rpcQueue,
      options: { durable: true },
      bindings: [{ queue: n.rpcQueue, exchange: n.incoming, routingKey: ROUTE_RPC }]
    },
    deadLetter: {
      queue: n.deadLetterQueue,
      options: { durable: true, arguments: { 'x-queue-type': 'quorum' } },
      bindings: [{ queue: n.deadLetterQueue, exchange: n.deadLetterExchange, routingKey: ROUTE_DEAD }]
    }
  }
}

/** The whole durable topology, in the shape createPublisher replays on every channel reset. */
export function publisherTopology (n: BrokerNames, shards: number) {
  const { sends, rpc, deadLetter } = queueSpecs(n, shards)
  const specs = [...sends, rpc, deadLetter]
  return {
    exchanges: exchangeDeclarations(n),
    queues: specs.map(queueDeclaration),
    queueBindings: specs.flatMap((s) => s.bindings)
  }
}

/** One queue's declaration, in the shape createConsumer replays on every channel reset. */
export function consumerTopology (n: BrokerNames, which: 'rpc' | { sendShard: number }) {
  const spec = which === 'rpc' ? queueSpecs(n, 0).rpc : sendQueueSpec(n, which.sendShard)
  return {
    queue: spec.queue,
    queueOptions: spec.options,
    exchanges: exchangeDeclarations(n),
    queueBindings: spec.bindings
  }
}

/**
 * Declares the whole durable topology now. Publishers declare it lazily, at their
 * first publish; the worker calls this whenever it (re)connects so that the
 * dead-letter queue exists before the broker's own dead-lettering (delivery limit)
 * might need it — a dead-letter exchange with no queue drops messages silently.
 */
export async function declareTopology (connection: Connection, n: BrokerNames, shards: number): Promise<void> {
  const t = publisherTopology(n, shards)
  for (const e of t.exchanges) await connection.exchangeDeclare(e)
  for (const q of t.queues) await connection.queueDeclare(q)
  for (const b of t.queueBindings) await connection.queueBind(b)
}
