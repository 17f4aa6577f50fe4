// The demo page: everything it knows comes from the SDK's events. Plain JavaScript on
// purpose (no bundler); user text only ever goes through textContent.
import { ChatClient } from 'chat-gateway/client'

const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id))
const TYPING_SHOWN_MS = 3000
const TYPING_SENT_EVERY_MS = 2000

/**
 * A conversation as the page lists it: a group channel (`ch:<id>`) or a direct one
 * (`dm:<peer>`; it may exist before its channel does, until the first message).
 * @typedef {{ key: string, title: string, target: { channelId: string } | { toUserId: string },
 *   channelId?: string, messages: import('chat-gateway/client').Message[], unread: number,
 *   typing: Map<string, number> }} Conversation
 */
/** @type {Map<string, Conversation>} */
const conversations = new Map()
let me = ''
/** @type {string | undefined} */
let selected
/** @type {ChatClient | undefined} */
let client
let lastTypingSent = 0

const peerOf = (m) => (m.senderId === me ? m.toUserId ?? me : m.senderId)
const keyOfMessage = (m) => (m.kind === 'direct' ? `dm:${peerOf(m)}` : `ch:${m.channelId}`)

function conversation (key, init) {
  let c = conversations.get(key)
  if (c === undefined) {
    c = { key, messages: [], unread: 0, typing: new Map(), ...init }
    conversations.set(key, c)
  }
  return c
}

function addChannel (ch) {
  if (ch.kind === 'direct') {
    const peer = ch.peerId ?? ch.name
    conversation(`dm:${peer}`, { title: `@ ${peer}`, target: { toUserId: peer } }).channelId = ch.id
  } else {
    const c = conversation(`ch:${ch.id}`, { title: `# ${ch.name}`, target: { channelId: ch.id }, channelId: ch.id })
    if (ch.name !== '') c.title = `# ${ch.name}` // it may have been opened by a message first
  }
}

function renderChannels () {
  const list = $('channels')
  list.replaceChildren(...[...conversations.values()].map((c) => {
    const button = document.createElement('button')
    button.type = 'button'
    button.dataset.key = c.key
    button.textContent = c.title
    if (c.key === selected) button.className = 'selected'
    if (c.unread > 0) {
      const badge = document.createElement('span')
      badge.className = 'unread'
      badge.textContent = String(c.unread)
      button.append(badge)
    }
    button.addEventListener('click', () => select(c.key))
    const li = document.createElement('li')
    li.append(button)
    return li
  }))
}

function renderMessages () {
  const c = selected === undefined ? undefined : conversations.get(selected)
  $('title').textContent = c?.title ?? 'Pick or start a conversation'
  $('messages').replaceChildren(...(c?.messages ?? []).map((m) => {
    const li = document.createElement('li')
    li.dataset.seq = String(m.seq)
    if (m.senderId === me) li.className = 'mine'
    const who = document.createElement('b')
    who.textContent = m.senderId
    const when = document.createElement('time')
    when.dateTime = m.createdAt
    when.textContent = new Date(m.createdAt).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
    li.append(who, m.content, when)
    return li
  }))
  $('messages').scrollTop = $('messages').scrollHeight
  renderTyping()
}

function renderTyping () {
  const c = selected === undefined ? undefined : conversations.get(selected)
  const now = Date.now()
  const who = c === undefined ? [] : [...c.typing].filter(([, until]) => until > now).map(([user]) => user)
  $('typing').textContent = who.length === 0 ? '' : `${who.join(', ')} ${who.length === 1 ? 'is' : 'are'} typing…`
}

function select (key) {
  selected = key
  const c = conversations.get(key)
  if (c !== undefined) c.unread = 0
  for (const id of ['text', 'send']) /** @type {HTMLInputElement} */ ($(id)).disabled = c === undefined
  renderChannels()
  renderMessages()
  $('text').focus()
}

function showError (where, err) {
  const el = $(where)
  el.hidden = err === undefined
  el.textContent = err === undefined ? '' : `${err.code ?? 'ERROR'}: ${err.message}`
}

async function devToken (userId) {
  const res = await fetch('/dev/token', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ userId }) })
  if (res.status === 404) throw new Error('POST /dev/token is disabled: start the gateway with DEV_TOKENS_ENABLED=true')
  const body = await res.json()
  if (!res.ok) throw new Error(body.error?.message ?? `HTTP ${res.status}`)
  return body.token
}

function start (name) {
  me = name
  // A fresh token on every (re)connection: dev tokens expire after an hour.
  client = new ChatClient({ url: location.origin, token: () => devToken(name), backlog: 50 })
  client.on('state', (state, detail) => {
    const status = $('status')
    status.dataset.state = state
    status.textContent = state === 'disconnected' ? `disconnected (${detail.reason ?? ''}), retrying` : state
  })
  client.on('ready', (session) => {
    $('server').textContent = session.serverId
    for (const ch of client?.channels() ?? []) addChannel(ch)
    renderChannels()
  })
  client.on('channel:joined', (ch) => { addChannel(ch); renderChannels() })
  client.on('channel:left', (id) => {
    conversations.delete(`ch:${id}`)
    if (selected === `ch:${id}`) selected = undefined
    renderChannels()
    renderMessages()
  })
  client.on('message', (m) => {
    const c = m.kind === 'direct'
      ? conversation(keyOfMessage(m), { title: `@ ${peerOf(m)}`, target: { toUserId: peerOf(m) } })
      : conversation(keyOfMessage(m), { title: '# …', target: { channelId: m.channelId }, channelId: m.channelId })
    c.channelId = m.channelId
    c.messages.push(m)
    c.typing.delete(m.senderId)
    if (c.key !== selected) c.unread++
    renderChannels()
    if (c.key === selected) renderMessages()
  })
  client.on('typing', ({ channelId, userId }) => {
    const c = [...conversations.values()].find((x) => x.channelId === channelId)
    if (c === undefined) return
    c.typing.set(userId, Date.now() + TYPING_SHOWN_MS)
    renderTyping()
    setTimeout(renderTyping, TYPING_SHOWN_MS + 50)
  })
  client.on('rejected', ({ error }) => showError('error', error))
  client.on('error', (err) => console.warn('chat:', err.code, err.message))
  $('me').textContent = name
  $('login').hidden = true
  $('chat').hidden = false
}

$('login').addEventListener('submit', (e) => {
  e.preventDefault()
  const name = /** @type {HTMLInputElement} */ ($('login-name')).value.trim()
  // Ask once here, so that a refusal is shown on the form instead of retried for ever.
  devToken(name).then(() => start(name), (err) => showError('login-error', err))
})

$('dm-form').addEventListener('submit', (e) => {
  e.preventDefault()
  const input = /** @type {HTMLInputElement} */ ($('dm-user'))
  const peer = input.value.trim()
  if (peer === '') return
  conversation(`dm:${peer}`, { title: `@ ${peer}`, target: { toUserId: peer } })
  input.value = ''
  select(`dm:${peer}`)
})

$('group-form').addEventListener('submit', (e) => {
  e.preventDefault()
  const name = /** @type {HTMLInputElement} */ ($('group-name'))
  const members = /** @type {HTMLInputElement} */ ($('group-members'))
  const memberIds = members.value.split(',').map((s) => s.trim()).filter((s) => s !== '' && s !== me)
  client?.createChannel(name.value.trim(), memberIds).then((channelId) => {
    addChannel({ id: channelId, kind: 'group', name: name.value.trim(), lastSeq: 0 })
    name.value = members.value = ''
    select(`ch:${channelId}`)
    showError('error', undefined)
  }, (err) => showError('error', err))
})

$('composer').addEventListener('submit', (e) => {
  e.preventDefault()
  const input = /** @type {HTMLInputElement} */ ($('text'))
  const c = selected === undefined ? undefined : conversations.get(selected)
  if (c === undefined || client === undefined || input.value === '') return
  // send() retries until a gateway takes it; the message itself comes back through 'message'.
  client.send(c.target, input.value).then(() => showError('error', undefined), (err) => showError('error', err))
  input.value = ''
  lastTypingSent = 0
})

$('text').addEventListener('input', () => {
  const c = selected === undefined ? undefined : conversations.get(selected)
  if (c?.channelId === undefined || client === undefined || Date.now() - lastTypingSent < TYPING_SENT_EVERY_MS) return
  lastTypingSent = Date.now()
  // Ephemeral: a refused or lost typing notice does not matter.
  client.typing(c.channelId).catch(() => {})
})
