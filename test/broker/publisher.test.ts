/**
 * Confirmed publishing on a real broker: RabbitMQ confirms unroutable messages too, so
 * a mandatory publish that no queue takes must be reported as such, each one, even
 * when several in flight carry the same messageId (the gateway uses the client's
 * clientMsgId, and a client may send the same one twice at once).
 */
import { Connection } from 'rabbitmq-client'
import t from 'tap'
import { ConfirmedPublisher, PublishError } from '../../src/broker/publisher.js'
import { createVhost } from '../helpers/services.js'

const { url } = await createVhost(t)
const connection = new Connection(url)
t.teardown(() => connection.close())
await connection.exchangeDeclare({ exchange: 'x', type: 'direct' })
await connection.queueDeclare({ queue: 'taken' })
await connection.queueBind({ queue: 'taken', exchange: 'x', routingKey: 'routed' })

t.test('each unroutable mandatory publish is reported, whatever its messageId', async (t) => {
  const publisher = new ConfirmedPublisher(connection)
  t.teardown(() => publisher.close())
  const send = (routingKey: string, messageId: string) =>
    publisher.publish({ exchange: 'x', routingKey, mandatory: true, messageId }, { n: 1 }, 5000)
      .then(() => 'confirmed', (err: unknown) => err instanceof PublishError ? err.code : String(err))
  t.same(await Promise.all([send('nowhere', 'same'), send('nowhere', 'same')]), ['APP_PUBLISH_UNROUTABLE', 'APP_PUBLISH_UNROUTABLE'], 'two unroutable with one id: both reported')
  t.same(await Promise.all([send('routed', 'twin'), send('nowhere', 'twin')]), ['confirmed', 'APP_PUBLISH_UNROUTABLE'], 'one routed, one not, one id: each told apart')
  t.same(await Promise.all([send('nowhere', 'twin2'), send('routed', 'twin2')]), ['APP_PUBLISH_UNROUTABLE', 'confirmed'], 'in the other order too')
  const { messageCount } = await connection.queueDeclare({ queue: 'taken', passive: true })
  t.equal(messageCount, 2, 'the routed ones are in the queue')
})
