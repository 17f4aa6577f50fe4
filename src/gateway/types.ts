/** The gateway's typed Socket.IO server and socket (the one sanctioned cast is in plugins/socket-io.ts). */
import type { Server, Socket } from 'socket.io'
import type { ClientToServerEvents, ServerToClientEvents } from '../contracts/protocol.js'
import type { Bucket } from './handle.js'

export interface SocketData {
  userId: string
  /** Token expiry, seconds since epoch; enforced by gateway/sweep.ts. */
  exp: number
  /** The socket's rate-limit token bucket (gateway/handle.ts). */
  bucket: Bucket
  /** Events waiting for the session to open (gateway/handle.ts). */
  waiting?: number
}

// eslint-disable-next-line @typescript-eslint/no-empty-interface
export interface InterServerEvents {}

export type AppIo = Server<ClientToServerEvents, ServerToClientEvents, InterServerEvents, SocketData>
export type AppSocket = Socket<ClientToServerEvents, ServerToClientEvents, InterServerEvents, SocketData>

/** Socket.IO room of every socket of a user, and of every local member of a channel. */
export const userRoom = (userId: string) => `u:${userId}`
export const channelRoom = (channelId: string) => `c:${channelId}`
