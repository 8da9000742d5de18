// A real OpenID Connect provider (panva's oidc-provider) for the single sign-on tests.
//
//   node oidc_provider.mjs CONFIG.json
//
// CONFIG: {"cert", "key", "client_id", "client_secret", "redirect_uri",
// "post_logout_redirect_uri"}. Serves HTTPS on a free 127.0.0.1 port with the given
// certificate, prints "ready ISSUER" on stdout once it listens, and stops on SIGTERM.
//
// The login form is oidc-provider's development one (any password); the accounts
// are synthetic: "alice" is in the mwl-admins group, "erin" in mwl-editors, "bob"
// has no group claim at all.
import fs from 'node:fs';
import https from 'node:https';
import process from 'node:process';

import Provider from 'oidc-provider';

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const server = https.createServer({
  cert: fs.readFileSync(config.cert),
  key: fs.readFileSync(config.key),
});
// The port first: the issuer URL, which the provider is built with, names it.
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `https://127.0.0.1:${server.address().port}`;

const accounts = {
  alice: { name: 'Alice Test', groups: ['mwl-admins', 'staff'] },
  erin: { name: 'Erin Test', groups: ['mwl-editors'] },
  bob: { name: 'Bob Test' },
};

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: config.client_id,
      client_secret: config.client_secret,
      redirect_uris: [config.redirect_uri],
      post_logout_redirect_uris: [config.post_logout_redirect_uri],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  // PKCE for every client, confidential ones included (the broker must send it).
  pkce: { required: () => true },
  scopes: ['openid', 'profile', 'groups'],
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    groups: ['groups'],
  },
  // Claims of the granted scopes go into the ID token too (as Entra ID does for groups).
  conformIdTokenClaims: false,
  cookies: { keys: ['test-only-cookie-key-0123456789'] },
  features: {
    devInteractions: { enabled: true },
    rpInitiatedLogout: { enabled: true },
  },
  async findAccount(_ctx, id) {
    const account = accounts[id];
    if (!account) {
      return undefined;
    }
    return {
      accountId: id,
      async claims() {
        const claims = { sub: id, name: account.name, preferred_username: id };
        if (account.groups) {
          claims.groups = account.groups;
        }
        return claims;
      },
    };
  },
});
server.on('request', provider.callback());
process.stdout.write(`ready ${issuer}\n`);
process.on('SIGTERM', () => {
  server.close();
  server.closeAllConnections();
  process.exit(0);
});
