/**
 * The gateway's Prometheus metrics (prefix chat_gateway_), on a registry of its own.
 * The bound-key gauges are what the platform autoscales on; docs/OPERATIONS.md
 * documents every metric.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import type { BindingStats } from '../broker/binding-manager.js'

export type GatewayMetrics = ReturnType<typeof createGatewayMetrics>

export interface GaugeSources {
  sockets: () => number
  users: () => number
  bindings: () => BindingStats
  ready: () => boolean
  draining: () => boolean
  /** Depth of the deepest send queue at the last read; undefined when unknown or not watched. */
  backlog: () => number | undefined
  /** Send shards whose queue had no consumer at the last read; undefined while unknown. */
  unconsumedShards: () => number | undefined
}

export function createGatewayMetrics (labels: { server_id: string, region: string }, withDefaults = true) {
  const registry = new Registry()
  registry.setDefaultLabels(labels)
  if (withDefaults) collectDefaultMetrics({ register: registry, prefix: 'chat_gateway_' })
  const registers = [registry]
  let sources: GaugeSources | undefined
  const gauge = (name: string, help: string, read: (s: GaugeSources) => number) =>
    new Gauge({ name, help, registers, collect () { if (sources !== undefined) this.set(read(sources)) } })

  gauge('chat_gateway_sockets', 'Connected sockets.', (s) => s.sockets())
  gauge('chat_gateway_users', 'Distinct users with at least one socket here.', (s) => s.users())
  new Gauge({
    name: 'chat_gateway_bound_keys',
    help: 'Routing keys bound to this gateway\'s queue, by kind (user or channel). Autoscale on this.',
    labelNames: ['kind'] as const,
    registers,
    collect () {
      if (sources === undefined) return
      const stats = sources.bindings()
      this.set({ kind: 'user' }, stats.boundUserKeys)
      this.set({ kind: 'channel' }, stats.boundChannelKeys)
    }
  })
  gauge('chat_gateway_bindings_desired', 'Routing keys with at least one local reference.', (s) => s.bindings().desired)
  gauge('chat_gateway_bindings_missing', 'Desired keys not bound yet (non-zero after a reconnect until re-bound).', (s) => s.bindings().missing)
  gauge('chat_gateway_bind_operations_pending', 'Bind/unbind operations queued or in flight.', (s) => s.bindings().pending)
  gauge('chat_gateway_ready', '1 when /ready answers 200.', (s) => s.ready() ? 1 : 0)
  gauge('chat_gateway_draining', '1 while shutting down.', (s) => s.draining() ? 1 : 0)
  gauge('chat_gateway_worker_backlog_messages', 'Messages waiting in the deepest send queue (shard) at the last read (NaN when unknown); sends to a shard are refused while its queue is over SEND_BACKLOG_MAX. Alert on this: a shard\'s active worker is not keeping up.', (s) => s.backlog() ?? Number.NaN)
  gauge('chat_gateway_send_shards_unconsumed', 'Send shards whose queue had no consumer at the last read (NaN when unknown): no worker stores their sends, which wait. Alert when it stays above 0.', (s) => s.unconsumedShards() ?? Number.NaN)

  return {
    registry,
    /** Connects the gauges to live state; called once the gateway is assembled. */
    setSources: (s: GaugeSources) => { sources = s },
    bindOps: new Counter({ name: 'chat_gateway_bind_operations_total', help: 'Completed bind and unbind operations.', labelNames: ['op'] as const, registers }),
    bindLatency: new Histogram({ name: 'chat_gateway_bind_seconds', help: 'Time of one bind or unbind, including waiting for a pool channel.', labelNames: ['op'] as const, buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1], registers }),
    rebind: new Histogram({ name: 'chat_gateway_rebind_seconds', help: 'Time from a (re)declared queue to every desired key bound.', buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 60], registers }),
    messagesIn: new Counter({ name: 'chat_gateway_messages_in_total', help: 'Sends confirmed by the broker.', registers }),
    deliveries: new Counter({ name: 'chat_gateway_deliveries_total', help: 'Deliveries taken from this gateway\'s queue, by type.', labelNames: ['type'] as const, registers }),
    deliveriesDropped: new Counter({ name: 'chat_gateway_deliveries_dropped_total', help: 'Deliveries the broker dropped from this gateway\'s full queue (GATEWAY_QUEUE_MAX_LENGTH); each burst is followed by a membership re-read and session:resync.', registers }),
    events: new Counter({ name: 'chat_gateway_events_total', help: 'Client events received, by event.', labelNames: ['event'] as const, registers }),
    errors: new Counter({ name: 'chat_gateway_event_errors_total', help: 'Client events answered with an error, by event and code.', labelNames: ['event', 'code'] as const, registers }),
    publishConfirm: new Histogram({ name: 'chat_gateway_publish_confirm_seconds', help: 'Time from publish to broker confirm of a send.', buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5], registers }),
    sendsRefused: new Counter({ name: 'chat_gateway_sends_refused_total', help: 'Sends answered UNAVAILABLE, by reason (backlog, blocked, disconnected, unconfirmed).', labelNames: ['reason'] as const, registers }),
    slowConsumers: new Counter({ name: 'chat_gateway_slow_consumers_total', help: 'Sockets cut because they did not read their messages (write backlog over the limit).', registers }),
    connections: new Counter({ name: 'chat_gateway_connections_total', help: 'Socket connections, by outcome (accepted, unauthorized, refused).', labelNames: ['outcome'] as const, registers })
  }
}
