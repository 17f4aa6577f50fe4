/**
 * The client SDK (`chat-gateway/client`): runs in Node and in browsers; its only
 * runtime dependency is socket.io-client. docs/CLIENT.md shows how to use it.
 */
export { ChatClient, createChatClient } from './chat-client.js'
export type { ChatClientEvents, ConnectionState, HistoryQuery, SendTarget } from './chat-client.js'
export type { ChatClientOptions } from './options.js'
export { ChatError } from './errors.js'
export type { ChatErrorCode } from './errors.js'
export type { TrackerStats } from './channel-tracker.js'
export type { ChannelKind, ChannelSummary, Message, SessionReady } from '../contracts/protocol.js'
