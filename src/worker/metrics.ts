/**
 * The worker's Prometheus metrics (prefix chat_worker_), on a registry of its own
 * so several workers can live in one test process. Documented in docs/OPERATIONS.md.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'

export type WorkerMetrics = ReturnType<typeof createWorkerMetrics>

export function createWorkerMetrics (labels: { server_id: string, region: string }, withDefaults = true) {
  const registry = new Registry()
  registry.setDefaultLabels(labels)
  if (withDefaults) collectDefaultMetrics({ register: registry, prefix: 'chat_worker_' })
  const registers = [registry]
  let brokerUp: () => boolean = () => false
  return {
    /** The gauge chat_worker_broker_up reads this at every scrape. */
    setBrokerUp: (read: () => boolean) => { brokerUp = read },
    registry,
    persisted: new Counter({ name: 'chat_worker_messages_persisted_total', help: 'Messages stored for the first time.', registers }),
    duplicates: new Counter({ name: 'chat_worker_messages_duplicate_total', help: 'Sends skipped because (sender, clientMsgId) was already stored.', registers }),
    rejected: new Counter({ name: 'chat_worker_messages_rejected_total', help: 'Sends refused for good (e.g. sender not a member); the sender gets message:rejected.', registers }),
    deadLettered: new Counter({ name: 'chat_worker_messages_dead_lettered_total', help: 'Messages moved to the dead-letter queue (malformed or refused by the database).', registers }),
    retried: new Counter({ name: 'chat_worker_messages_retried_total', help: 'Messages whose batch was retried after a transient database failure.', registers }),
    delivered: new Counter({ name: 'chat_worker_deliveries_published_total', help: 'Deliveries published to the outgoing exchange and confirmed.', registers }),
    rpc: new Counter({ name: 'chat_worker_rpc_total', help: 'RPC requests served, by operation and outcome.', labelNames: ['op', 'outcome'] as const, registers }),
    batchSize: new Histogram({ name: 'chat_worker_batch_size', help: 'Messages per persisted batch.', buckets: [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000], registers }),
    dbLatency: new Histogram({ name: 'chat_worker_db_batch_seconds', help: 'Time to persist one batch (one transaction).', buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5], registers }),
    rpcLatency: new Histogram({ name: 'chat_worker_rpc_seconds', help: 'Time to serve one RPC request.', labelNames: ['op'] as const, buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1], registers }),
    databaseUp: new Gauge({ name: 'chat_worker_database_up', help: '1 when the last database operation succeeded.', registers }),
    brokerUp: new Gauge({ name: 'chat_worker_broker_up', help: '1 when every consumer (each consumed send shard, and RPC) is subscribed.', registers, collect () { this.set(brokerUp() ? 1 : 0) } })
  }
}
