'use strict'
// A small stand-in for Kado 4.0's Session library, as a Node.js app uses it
// against a SessionStorage server: the SessionStoreLocal client and the
// Session object its middleware hands each request. Written from Kado's
// documentation (docs: /work/shared/seed/Session.md) and the wire contract
// in DESIGN.md, and made to behave on the wire as Kado's client does, so
// that what passes here passes for an unchanged Kado app:
//
//   - one TCP connection per request; as soon as it is connected the client
//     writes one JSON document and half-closes ({"save":{"sid","data",
//     "_written"}} or {"restore":{"sid","_written"}});
//   - it decodes every chunk it receives as UTF-8 on its own and appends
//     the text to a string (so a character split between two TCP segments
//     would turn into U+FFFD), and parses that string only when the socket
//     has closed;
//   - a reply whose status is not "ok" is an error; a restore resolves with
//     the reply's "result".
// Unlike Kado it reports the server's message instead of "Empty response",
// and clears its timer, so a test's failure says what went wrong.
const net = require('net')

class SessionStoreLocal {
  constructor (options = {}) {
    this.host = options.host || 'localhost'
    this.port = options.port || 3001
    this.duration = options.duration || 6 * 3600 * 1000
    this.timeout = options.timeout || 30000
  }

  request (command, body) {
    return new Promise((resolve, reject) => {
      if (typeof body.sid !== 'string') return reject(new Error('sid must be a string'))
      body._written = Date.now()
      const sock = net.createConnection({ host: this.host, port: this.port })
      let text = ''
      let settled = false
      const done = (err, value) => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        if (err) reject(err); else resolve(value)
      }
      const timer = setTimeout(() => {
        sock.destroy()
        done(new Error(`no answer within ${this.timeout} ms`))
      }, this.timeout)
      sock.on('connect', () => { sock.end(JSON.stringify({ [command]: body })) })
      sock.on('data', (chunk) => { text += chunk.toString('utf8') })
      sock.on('error', (e) => { sock.lastError = e; sock.destroy() })
      sock.on('close', () => {
        let reply
        try {
          reply = JSON.parse(text)
        } catch (e) {
          const why = sock.lastError ? ` (socket error: ${sock.lastError.code || sock.lastError.message})` : ''
          return done(new Error(`unparsable reply of ${text.length} chars${why}: ${e.message}`))
        }
        if (reply === null || reply.status !== 'ok') {
          const err = new Error(`Invalid session response: ${reply && reply.message}`)
          err.reply = reply
          return done(err)
        }
        done(null, reply)
      })
    })
  }

  save (sid, data) { return this.request('save', { sid, data }) }

  restore (sid) {
    return this.request('restore', { sid }).then((reply) => {
      if (!reply.result) throw new Error('Empty session response')
      return reply.result
    })
  }

  // Kado's SessionStoreLocal.prune counts entries of a local table it never
  // fills: the server, not the client, ages sessions out. So here.
  prune () { return 0 }
}

// Session is what Kado's middleware puts on req.session: restore once per
// request, get/set, save at the end when anything was set.
class Session {
  constructor (sid, store) {
    this.sid = sid
    this.store = store
    this.data = {}
    this.written = false
  }

  restore () {
    return this.store.restore(this.sid).then((result) => {
      if (typeof result === 'object') this.data = result
      return this.data
    })
  }

  get (key) { return this.data[key] }

  set (key, value) {
    this.data[key] = value
    this.written = true
    return this
  }

  save () {
    if (!this.written) return Promise.resolve(true)
    return this.store.save(this.sid, this.data)
  }
}

// generateId makes a 40-hex id as Kado's Session.generateId does (a SHA-1
// digest of the time, ip and agent), with real randomness added.
function generateId (ip, agent) {
  const crypto = require('crypto')
  return crypto.createHash('sha1')
    .update(String(Date.now()) + ip + agent)
    .update(crypto.randomBytes(16))
    .digest('hex')
}

module.exports = { SessionStoreLocal, Session, generateId }
