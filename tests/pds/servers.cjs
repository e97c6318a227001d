// Starts the reference PLC directory (in-memory) and PDS on loopback, for fixtures and
// integration tests. Usage as a module: `const { startServers } = require('./servers.cjs')`.
// Usage as a program: `node servers.cjs <dataDir>` prints one line `READY {"pds":..,"plc":..}`
// and runs until SIGTERM.
'use strict'
const net = require('net')
const fs = require('fs')
const path = require('path')
const crypto = require('crypto')

// Both servers call listen(port), which binds every interface: force loopback.
const originalListen = net.Server.prototype.listen
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number' && typeof args[1] !== 'string') args.splice(1, 0, '127.0.0.1')
  return originalListen.apply(this, args)
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.once('error', reject)
    originalListen.call(srv, 0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

async function startServers(dataDir) {
  fs.rmSync(dataDir, { recursive: true, force: true }) // the PLC forgets everything: so must the PDS
  fs.mkdirSync(dataDir, { recursive: true })
  const plcLib = require('@did-plc/server')
  const plcPort = await freePort()
  const plc = plcLib.PlcServer.create({ db: plcLib.Database.mock(), port: plcPort })
  await plc.start()
  const plcUrl = `http://127.0.0.1:${plcPort}`

  const pdsPort = await freePort()
  Object.assign(process.env, {
    PDS_PORT: String(pdsPort),
    PDS_HOSTNAME: 'localhost',
    PDS_DEV_MODE: 'true',
    PDS_DATA_DIRECTORY: dataDir,
    PDS_BLOBSTORE_DISK_LOCATION: path.join(dataDir, 'blobs'),
    PDS_DID_PLC_URL: plcUrl,
    PDS_SERVICE_HANDLE_DOMAINS: '.test',
    PDS_INVITE_REQUIRED: 'false',
    PDS_RATE_LIMITS_ENABLED: 'false',
    PDS_DISABLE_SSRF_PROTECTION: 'true',
    PDS_PLC_ROTATION_KEY_K256_PRIVATE_KEY_HEX: crypto.randomBytes(32).toString('hex'),
    PDS_JWT_SECRET: crypto.randomBytes(16).toString('hex'),
    PDS_ADMIN_PASSWORD: crypto.randomBytes(16).toString('hex'),
    PDS_BSKY_APP_VIEW_URL: 'https://appview.invalid',
    PDS_BSKY_APP_VIEW_DID: 'did:web:appview.invalid',
    PDS_MOD_SERVICE_URL: 'https://mod.invalid',
    PDS_MOD_SERVICE_DID: 'did:web:mod.invalid',
    PDS_REPORT_SERVICE_URL: 'https://mod.invalid',
    PDS_REPORT_SERVICE_DID: 'did:web:mod.invalid',
    PDS_CRAWLERS: '',
    LOG_ENABLED: 'false',
  })
  const pdsLib = require('@atproto/pds')
  const env = pdsLib.readEnv()
  const pds = await pdsLib.PDS.create(pdsLib.envToCfg(env), pdsLib.envToSecrets(env))
  await pds.start()
  const pdsUrl = `http://127.0.0.1:${pdsPort}`
  // Test hook, loopback only: POST /rotate-key?did=DID gives the account a new signing key the
  // way the PDS's own scripts/rotate-keys does (new key in the actor store, PLC update, an
  // empty commit signed by it, then #identity and #sync on the firehose).
  const http = require('http')
  const adminPort = await freePort()
  const admin = http.createServer(async (req, res) => {
    try {
      const url = new URL(req.url, 'http://localhost')
      const did = url.searchParams.get('did')
      if (req.method !== 'POST' || url.pathname !== '/rotate-key' || !did) {
        res.writeHead(404).end()
        return
      }
      const { Secp256k1Keypair } = require('@atproto/crypto')
      const ctx = pds.ctx
      const { keyLocation } = await ctx.actorStore.getLocation(did)
      const keypair = await Secp256k1Keypair.create({ exportable: true })
      fs.writeFileSync(keyLocation, await keypair.export())
      await ctx.plcClient.updateAtprotoKey(did, ctx.plcRotationKey, keypair.did())
      const syncData = await ctx.actorStore.transact(did, async (txn) => {
        await txn.repo.processWrites([])
        return txn.repo.getSyncEventData()
      })
      await ctx.sequencer.sequenceIdentityEvt(did)
      await ctx.sequencer.sequenceSyncEvt(did, syncData)
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ key: keypair.did() }))
    } catch (e) {
      res.writeHead(500).end(String(e && e.stack))
    }
  })
  await new Promise((resolve) => originalListen.call(admin, adminPort, '127.0.0.1', resolve))
  return {
    pdsUrl,
    plcUrl,
    adminUrl: `http://127.0.0.1:${adminPort}`,
    async stop() {
      admin.close()
      await pds.destroy()
      await plc.destroy()
    },
  }
}

module.exports = { startServers }

if (require.main === module) {
  const dataDir = process.argv[2] || path.join(require('os').tmpdir(), 'atproto-verifier-pds')
  startServers(dataDir).then(
    (s) => {
      process.stdout.write(`READY ${JSON.stringify({ pds: s.pdsUrl, plc: s.plcUrl, admin: s.adminUrl })}\n`)
      const stop = () => s.stop().finally(() => process.exit(0))
      process.on('SIGTERM', stop)
      process.on('SIGINT', stop)
      // Tests pipe stdin: when the test process goes away, so do the servers.
      if (process.env.STOP_ON_STDIN_EOF) {
        process.stdin.on('end', stop)
        process.stdin.resume()
      }
    },
    (e) => {
      console.error('failed to start PDS/PLC:', e)
      process.exit(1)
    },
  )
}
