'use strict'
// A Kado-style Node.js app's session traffic against a kadosession node,
// through session.js (which talks as Kado 4.0's SessionStoreLocal does).
//
//   node app.js flow   HOST:PORT [--max-size N] [--scale N]
//        requests as Kado's middleware makes them, parallel saves and
//        restores, sessions near the size limit, unicode and odd JSON values,
//        the answers to bad requests
//   node app.js writer HOST:PORT ACKFILE SECS
//        save one new session after another (as a busy app would) for SECS
//        seconds or until SIGTERM, appending each acknowledged sid to ACKFILE
//   node app.js acked  HOST:PORT ACKFILE
//        every sid in ACKFILE restores with the data its save carried
//   node app.js expire HOST:PORT SECS
//        a session saved on a node started with a short --duration is gone
//        (restores as {}) within SECS seconds, and was there at first
//
// Each check prints "ok <name>" or "FAIL <name>: <why>"; the exit status is
// 1 when any check failed, 2 on bad usage. cmd/kadosession's
// TestNodeKadoApp runs it against real `kadosession serve` processes.
const fs = require('fs')
const net = require('net')
const assert = require('assert')
const { SessionStoreLocal, Session, generateId } = require('./session')

let failed = 0
async function check (name, fn) {
  const start = Date.now()
  try {
    const note = await fn()
    console.log(`ok ${name} (${Date.now() - start} ms)${note ? ': ' + note : ''}`)
  } catch (e) {
    failed++
    console.log(`FAIL ${name}: ${e && e.stack ? e.stack : e}`)
  }
}

function storeFor (addr) {
  const i = addr.lastIndexOf(':')
  return new SessionStoreLocal({ host: addr.slice(0, i), port: Number(addr.slice(i + 1)), timeout: 20000 })
}

// raw sends bytes as a Kado client would (write, half-close, read to the
// server's close) and returns the reply text and whether the connection
// ended in an error (a reset) rather than the server's close.
function raw (addr, bytes) {
  const i = addr.lastIndexOf(':')
  return new Promise((resolve) => {
    const sock = net.createConnection({ host: addr.slice(0, i), port: Number(addr.slice(i + 1)) })
    const chunks = []
    let error = null
    sock.on('connect', () => sock.end(bytes))
    sock.on('data', (c) => chunks.push(c))
    sock.on('error', (e) => { error = e })
    sock.on('close', () => resolve({ text: Buffer.concat(chunks).toString('utf8'), error }))
    sock.setTimeout(20000, () => sock.destroy(new Error('timeout')))
  })
}

// A request through Kado's middleware: restore the cookie's session (or
// make a new id), run the handler, save when it set anything.
async function kadoRequest (store, cookieSid, handler) {
  const sid = cookieSid || generateId('127.0.0.1', 'node-test')
  const s = new Session(sid, store)
  await s.restore()
  const out = handler(s)
  await s.save()
  return { sid, out }
}

async function flow (addr, opts) {
  const store = storeFor(addr)
  const scale = opts.scale

  await check('middleware flow: new visitor, counter over three requests, read-only request', async () => {
    const r1 = await kadoRequest(store, null, (s) => {
      assert.deepStrictEqual(s.data, {}, 'a new session restores as {}')
      s.set('views', 1).set('user', { name: 'ana' })
    })
    const r2 = await kadoRequest(store, r1.sid, (s) => { s.set('views', s.get('views') + 1); return s.get('user').name })
    assert.strictEqual(r2.out, 'ana')
    const r3 = await kadoRequest(store, r1.sid, (s) => s.get('views'))
    assert.strictEqual(r3.out, 2)
    const data = await store.restore(r1.sid)
    assert.deepStrictEqual(data, { views: 2, user: { name: 'ana' } }, 'restore gives back the data saved, nothing else (no _written)')
  })

  await check('restore of unknown and odd sids answers {} (Kado restores any cookie value)', async () => {
    for (const sid of ['never-saved-' + Date.now(), '__proto__', 'constructor', 'a b;c=d', 'ünï😀', 'x'.repeat(10000)]) {
      assert.deepStrictEqual(await store.restore(sid), {}, `sid ${JSON.stringify(sid.slice(0, 20))}`)
    }
  })

  await check('save and restore with odd but valid sids', async () => {
    for (const sid of ['__proto__', 'constructor', 'hasOwnProperty', 'a b;c=d', 'ünï😀', ' ']) {
      await store.save(sid, { who: sid })
      assert.deepStrictEqual(await store.restore(sid), { who: sid }, `sid ${JSON.stringify(sid)}`)
    }
  })

  await check(`parallel: ${scale} saves then ${scale} restores at once`, async () => {
    const prefix = 'par-' + Date.now() + '-'
    await Promise.all(Array.from({ length: scale }, (_, i) => store.save(prefix + i, { i, tag: 'p' + i })))
    const got = await Promise.all(Array.from({ length: scale }, (_, i) => store.restore(prefix + i)))
    got.forEach((d, i) => assert.deepStrictEqual(d, { i, tag: 'p' + i }, `session ${i}`))
  })

  await check(`parallel: ${scale} saves and restores of one session interleaved`, async () => {
    const sid = 'one-' + Date.now()
    await store.save(sid, { v: -1 })
    const ops = []
    for (let i = 0; i < scale; i++) {
      ops.push(store.save(sid, { v: i }))
      ops.push(store.restore(sid).then((d) => assert.ok(Number.isInteger(d.v) && d.v >= -1 && d.v < scale, `restore saw ${JSON.stringify(d)}`)))
    }
    await Promise.all(ops)
    const d = await store.restore(sid)
    assert.ok(Number.isInteger(d.v) && d.v >= 0 && d.v < scale, `final ${JSON.stringify(d)}`)
  })

  await check('unicode and odd JSON values come back as saved', async () => {
    const data = JSON.parse(JSON.stringify({
      s: 'héllo wörld — 日本語 — 😀🎉 — \u0000\u0001\u001f — \u2028\u2029 — "quotes" \\ / \t\n',
      lone: '\ud800x\udfff', // lone surrogates: JSON.stringify escapes them, JS keeps them
      emptyKey: { '': 'empty key' },
      nums: [0, -0, 1.5, -1e-7, 1e300, 9007199254740991, 123456789012],
      bools: [true, false, null],
      nested: { a: [{ b: [[[]]] }, {}], z: { y: { x: { w: 'deep' } } } },
      date: new Date(0),
      'emoji key 😀': 1,
      undefinedIsDropped: undefined
    }))
    data.__proto__x = 'close to __proto__'
    const withProto = JSON.parse('{"__proto__":{"polluted":true},"constructor":"c","toString":"t"}')
    Object.assign(data, { keys: withProto })
    await store.save('odd-values', data)
    const got = await store.restore('odd-values')
    assert.deepStrictEqual(got, data)
    assert.strictEqual(got.lone, '\ud800x\udfff', 'lone surrogates survive')
    assert.strictEqual(JSON.stringify(got.keys), '{"__proto__":{"polluted":true},"constructor":"c","toString":"t"}')
    assert.strictEqual({}.polluted, undefined, 'no prototype pollution')
  })

  const limit = opts.maxSize
  await check(`a session near the size limit (${limit} bytes), ASCII`, async () => {
    const data = { blob: 'a'.repeat(limit - 64) }
    assert.ok(Buffer.byteLength(JSON.stringify(data)) < limit)
    await store.save('big-ascii', data)
    const got = await store.restore('big-ascii')
    assert.strictEqual(got.blob.length, data.blob.length)
    assert.ok(got.blob === data.blob, 'big ASCII session changed on the way')
  })

  await check(`a session near the size limit (${limit} bytes), multi-byte UTF-8`, async () => {
    // 1-, 2-, 3- and 4-byte characters, so the reply's TCP segments end
    // inside characters somewhere.
    const unit = 'aé中😀' // 1+2+3+4 bytes
    const n = Math.floor((limit - 64) / Buffer.byteLength(unit))
    const data = { blob: unit.repeat(n) }
    const bytes = Buffer.byteLength(JSON.stringify(data))
    assert.ok(bytes < limit, `${bytes} bytes`)
    await store.save('big-utf8', data)
    const got = await store.restore('big-utf8')
    const bad = got.blob.indexOf('\ufffd')
    assert.ok(bad < 0, `restored text holds U+FFFD at ${bad}: a character was split between two reads and decoded in halves`)
    assert.ok(got.blob === data.blob, 'big UTF-8 session changed on the way')
    return `${bytes} bytes`
  })

  await check('a session over the size limit is refused with a message saying so', async () => {
    const err = await store.save('too-big', { blob: 'b'.repeat(limit + 10) }).then(() => null, (e) => e)
    assert.ok(err, 'an over-size save was acknowledged')
    assert.ok(err.reply && err.reply.status === 'error' && /limit/.test(err.reply.message), `reply ${JSON.stringify(err.reply)} (${err.message})`)
    assert.deepStrictEqual(await store.restore('too-big'), {}, 'the refused save left nothing')
    await store.save('after-too-big', { ok: 1 })
    assert.deepStrictEqual(await store.restore('after-too-big'), { ok: 1 }, 'the node keeps serving')
  })

  await check('a saved _written key is the save time, not session data', async () => {
    await store.save('written-key', { a: 1, _written: 5 })
    assert.deepStrictEqual(await store.restore('written-key'), { a: 1 })
  })

  await check('replies: exactly one JSON document, no trailing newline, closed by the server (FIN, not a reset)', async () => {
    for (const req of [
      '{"save":{"sid":"frame","data":{"k":"v"},"_written":1}}',
      '{"restore":{"sid":"frame","_written":1}}',
      '{"restore":{"sid":"nobody-here"}}'
    ]) {
      const r = await raw(addr, req)
      assert.strictEqual(r.error, null, `connection error ${r.error}`)
      assert.ok(/^\{.*\}$/.test(r.text) && !r.text.endsWith('\n'), `reply ${JSON.stringify(r.text)}`)
      const reply = JSON.parse(r.text)
      assert.strictEqual(reply.status, 'ok')
    }
    assert.strictEqual((await raw(addr, '{"restore":{"sid":"frame"}}')).text, '{"status":"ok","result":{"k":"v"}}')
  })

  await check('bad requests get {"status":"error","message":…} and the node keeps serving', async () => {
    const bad = [
      '', 'null', '[]', '{}', 'not json', '{"save":{"sid":"x"}}', '{"save":{"sid":"x","data":[1]}}',
      '{"save":{"sid":"x","data":null}}', '{"save":{"data":{}}}', '{"restore":{"sid":7}}',
      '{"restore":null}', '{"save":{"sid":"x","data":{}}', '{"a":1}{"b":2}'
    ]
    for (const req of bad) {
      const r = await raw(addr, req)
      assert.strictEqual(r.error, null, `${JSON.stringify(req)}: connection error ${r.error}`)
      let reply
      try { reply = JSON.parse(r.text) } catch (e) { throw new Error(`${JSON.stringify(req)}: reply ${JSON.stringify(r.text)} is not JSON`) }
      assert.strictEqual(reply.status, 'error', `${JSON.stringify(req)} answered ${r.text}`)
      assert.ok(typeof reply.message === 'string' && reply.message.length > 5, `${JSON.stringify(req)}: message ${r.text}`)
    }
    assert.deepStrictEqual(await store.restore('frame'), { k: 'v' })
  })

  await check('prune is the server\'s: the client prunes nothing', async () => {
    assert.strictEqual(store.prune(), 0)
  })
}

async function writer (addr, ackFile, secs) {
  const store = storeFor(addr)
  store.timeout = 5000
  const fd = fs.openSync(ackFile, 'a')
  let stop = false
  process.on('SIGTERM', () => { stop = true })
  const end = Date.now() + secs * 1000
  let acked = 0; let refused = 0
  // Four at a time, each a new session, as four request handlers would.
  await Promise.all([0, 1, 2, 3].map(async (w) => {
    for (let i = 0; !stop && Date.now() < end; i++) {
      const sid = `w${w}-${i}-${process.pid}`
      try {
        await store.save(sid, { w, i, text: 'ünï ' + i })
        fs.writeSync(fd, sid + '\n')
        acked++
      } catch (e) {
        refused++ // Kado cannot retry: the app's request failed, and the test only needs acked ones kept
        await new Promise((resolve) => setTimeout(resolve, 20))
      }
    }
  }))
  fs.closeSync(fd)
  console.log(`writer: ${acked} acknowledged, ${refused} failed`)
}

async function acked (addr, ackFile) {
  const store = storeFor(addr)
  const sids = fs.readFileSync(ackFile, 'utf8').split('\n').filter(Boolean)
  await check(`all ${sids.length} acknowledged saves restore`, async () => {
    assert.ok(sids.length > 0, 'nothing was acknowledged: the test exercised nothing')
    for (let k = 0; k < sids.length; k += 64) {
      await Promise.all(sids.slice(k, k + 64).map(async (sid) => {
        const [w, i] = sid.slice(1).split('-').map(Number)
        assert.deepStrictEqual(await store.restore(sid), { w, i, text: 'ünï ' + i }, `acknowledged save ${sid} lost`)
      }))
    }
  })
}

async function expire (addr, secs) {
  const store = storeFor(addr)
  await check('an expired session restores as {}', async () => {
    await store.save('short-lived', { a: 1 })
    assert.deepStrictEqual(await store.restore('short-lived'), { a: 1 }, 'just saved')
    const start = Date.now()
    for (;;) {
      const d = await store.restore('short-lived')
      if (JSON.stringify(d) === '{}') return `gone after ${Date.now() - start} ms`
      if (Date.now() - start > secs * 1000) throw new Error(`still there after ${secs} s: ${JSON.stringify(d)}`)
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  })
  await check('a session saved again after it expired lives again', async () => {
    await store.save('short-lived', { a: 2 })
    assert.deepStrictEqual(await store.restore('short-lived'), { a: 2 })
  })
}

async function main (argv) {
  const [cmd, addr, ...rest] = argv
  const opts = { maxSize: 1048576, scale: 300 }
  for (let i = 0; i < rest.length; i++) {
    if (rest[i] === '--max-size') opts.maxSize = Number(rest[++i])
    else if (rest[i] === '--scale') opts.scale = Number(rest[++i])
  }
  switch (cmd) {
    case 'flow': await flow(addr, opts); break
    case 'writer': await writer(addr, rest[0], Number(rest[1])); break
    case 'acked': await acked(addr, rest[0]); break
    case 'expire': await expire(addr, Number(rest[0])); break
    default:
      console.error('usage: node app.js flow|writer|acked|expire HOST:PORT …')
      process.exit(2)
  }
  process.exit(failed ? 1 : 0)
}

main(process.argv.slice(2)).catch((e) => { console.log(`FAIL ${e.stack}`); process.exit(1) })
