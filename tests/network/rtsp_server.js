// A relay RTSP server for tests: publishers push to PUBLISH_PORT, readers play from CLIENT_PORT.
// Uses the npm package rtsp-streaming-server (UDP RTP only); every socket is bound to 127.0.0.1.
// usage: node rtsp_server.js PUBLISH_PORT CLIENT_PORT RTP_PORT_START
'use strict';
const net = require('net');
const dgram = require('dgram');

const HOST = '127.0.0.1';
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (port, ...rest) {
  if (typeof port === 'number') {
    const cb = rest.find((a) => typeof a === 'function');
    return listen.call(this, port, HOST, cb);
  }
  return listen.call(this, port, ...rest);
};
const bind = dgram.Socket.prototype.bind;
dgram.Socket.prototype.bind = function (port, ...rest) {
  if (typeof port === 'number') {
    const cb = rest.find((a) => typeof a === 'function');
    return bind.call(this, port, HOST, cb);
  }
  return bind.call(this, port, ...rest);
};

const RtspServer = require('rtsp-streaming-server').default;
const [publishPort, clientPort, rtpStart] = process.argv.slice(2).map(Number);
const server = new RtspServer({
  serverPort: publishPort,
  clientPort: clientPort,
  rtpPortStart: rtpStart,
  rtpPortCount: 1000,
});
server.start().then(() => {
  console.log(`ready ${publishPort} ${clientPort}`);
}).catch((e) => {
  console.error(String(e));
  process.exit(1);
});
process.on('SIGTERM', () => process.exit(0));
