/** What every socket handler needs, gathered once per gateway. */
import type { BindingManager } from '../broker/binding-manager.js'
import type { Config } from '../config.js'
import type { Logger } from '../log.js'
import type { GatewayBroker } from '../plugins/broker.js'
import type { GatewayMetrics } from './metrics.js'
import type { Sessions } from './sessions.js'
import type { UserRequests } from './user-requests.js'
import type { AppIo } from './types.js'

export interface GatewayContext {
  config: Config
  io: AppIo
  broker: GatewayBroker
  bindings: BindingManager
  sessions: Sessions
  /** Every worker request a client event makes goes through it (see UserRequests). */
  requests: UserRequests
  metrics: GatewayMetrics
  log: Logger
}
