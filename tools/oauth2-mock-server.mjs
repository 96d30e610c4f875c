// Starts the unmodified third-party oauth2-mock-server (npm) on a loopback
// port for the interoperability test, and prints "listening <issuer url>".
// Usage: node tools/oauth2-mock-server.mjs [port]   (0 = any free port)
import { OAuth2Server } from 'oauth2-mock-server';

const port = Number(process.argv[2] ?? 0);
const server = new OAuth2Server();
await server.issuer.keys.generate('RS256');
await server.start(port, '127.0.0.1');
console.log(`listening ${server.issuer.url}`);
