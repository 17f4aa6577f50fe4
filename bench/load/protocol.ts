/** Commands between the coordinator (bench/run.ts) and its load processes (load/agent.ts), over IPC. */

export interface ClientSpec {
  userId: string
  url: string
  /** Source address (127.0.0.x): about 28k ephemeral ports per source address. */
  localAddress?: string
  /** Peer servers only: the rooms the plain Socket.IO server joins this socket to. */
  channels?: string[]
}

export type SendTarget = { toUserId: string } | { channelId: string }

export interface SenderSpec {
  /** Index into this agent's clients. */
  client: number
  target: SendTarget
}

export type Command =
  | { op: 'connect', clients: ClientSpec[], concurrency: number, reconnection: boolean, timeoutMs: number }
  | { op: 'load', senders: SenderSpec[], kind: 'message' | 'typing', ratePerSec: number, durationMs: number, contentBytes: number, maxInflight: number, ackTimeoutMs: number }
  | { op: 'stats' }
  | { op: 'resetHistograms' }
  | { op: 'report' }
  | { op: 'disconnect' }

export interface AgentStats {
  clients: number
  connected: number
  ready: number
  connectFailed: number
  disconnects: number
  sent: number
  acked: number
  /** Sends not attempted because maxInflight were already waiting for acks (offered load shed). */
  shed: number
  inflight: number
  errors: Record<string, number>
  received: number
  duplicates: number
  typingSent: number
  typingAcked: number
  typingReceived: number
  /** The last load command finished sending. */
  loadDone: boolean
}

export interface AgentReport {
  stats: AgentStats
  histograms: { delivery: string, echo: string, ack: string, ready: string }
  /** One row per socket: unique message:new received (by sender and number) and repeats. */
  sockets: Array<{ userId: string, unique: number, duplicates: number, typing: number }>
  /** One row per sending user and target (user or channel id); typing sends count in `sent` too. */
  senders: Array<{ userId: string, target: string, sent: number, acked: number, typingAcked: number }>
}

export type Request = { id: number } & Command
export type Reply = { id: number, ok: true, result: unknown } | { id: number, ok: false, error: string }
