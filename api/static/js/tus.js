// A small tus 1.0 client (core and creation; an abandoned upload simply expires on the server): uploads a File in chunks and resumes after a
// dropped connection, a closed laptop lid or a reload, from the last byte the server has.
//
// The upload's URL is kept in localStorage under a key made of the assignment and the file's name,
// size and lastModified, so choosing the same file again (after a reload) carries on where it stopped.
// Every request carries the CSRF token and is same-origin, so the api's Origin check passes.

const TUS_VERSION = '1.0.0';
const STORE_PREFIX = 'handin-tus:';
// Waits before each retry after a network failure (ms); after the last one the caller is told.
const RETRY_DELAYS = [0, 1000, 3000, 5000, 10000, 20000];

export class UploadRefused extends Error {
  constructor(status, body) {
    super(`refused (${status})`);
    this.status = status;
    this.body = body;
  }
}

export class UploadInterrupted extends Error {}

export function storeKey(scope, file) {
  return `${STORE_PREFIX}${scope}:${file.name}:${file.size}:${file.lastModified}`;
}

// One XMLHttpRequest as a promise (fetch has no upload progress); status 0 means the network failed.
function send(method, url, { headers = {}, body = null, onProgress = null } = {}) {
  return new Promise((resolve) => {
    const request = new XMLHttpRequest();
    request.open(method, url);
    for (const [name, value] of Object.entries(headers)) request.setRequestHeader(name, value);
    if (onProgress) {
      request.upload.onprogress = (event) => onProgress(event.loaded);
    }
    request.onload = () => resolve(request);
    request.onerror = () => resolve(request);
    request.onabort = () => resolve(request);
    request.send(body);
  });
}

// Wait before a retry, but no longer than the network takes to come back (the lid opens).
function wait(ms) {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      window.removeEventListener('online', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    window.addEventListener('online', done);
  });
}

function base64(text) {
  return btoa(String.fromCharCode(...new TextEncoder().encode(text)));
}

export class ResumableUpload {
  // endpoint: the collection URL (POST creates); scope: what the stored URL is keyed by (the assignment).
  constructor(file, { endpoint, scope, chunkSize = 1024 * 1024, headers = () => ({}), onProgress = () => {},
    onStatus = () => {} }) {
    this.file = file;
    this.endpoint = endpoint;
    this.key = storeKey(scope, file);
    this.chunkSize = chunkSize;
    this.headers = headers;
    this.onProgress = onProgress;
    this.onStatus = onStatus;
    this.url = localStorage.getItem(this.key);
  }

  get resuming() {
    return Boolean(this.url);
  }

  _headers(extra = {}) {
    return { 'Tus-Resumable': TUS_VERSION, Accept: 'application/json', ...this.headers(), ...extra };
  }

  // Resolves with the submission id once the last byte is in; rejects with UploadRefused (the server
  // said no: show its words) or UploadInterrupted (the network stayed down through every retry).
  async start() {
    let failures = 0;
    for (;;) {
      const step = await this._step();
      if (step.done) {
        localStorage.removeItem(this.key);
        return step.submissionId;
      }
      if (step.progressed) {
        failures = 0;
        continue;
      }
      if (failures >= RETRY_DELAYS.length) throw new UploadInterrupted('the connection stayed down');
      this.onStatus('retrying', RETRY_DELAYS[failures]);
      await wait(RETRY_DELAYS[failures]);
      failures += 1;
    }
  }

  // One round: find the offset (HEAD, or create), then send one chunk. Network trouble is not an error
  // here: it comes back as {progressed: false} and the caller waits and tries again.
  async _step() {
    let offset;
    if (this.url) {
      const head = await send('HEAD', this.url, { headers: this._headers() });
      if (head.status === 200) {
        const done = head.getResponseHeader('Handin-Submission-Id');
        if (done) return { done: true, submissionId: Number(done) };
        offset = Number(head.getResponseHeader('Upload-Offset'));
      } else if (head.status === 404 || head.status === 410) {
        this._forget(); // expired or removed: start again from byte 0
        return { progressed: true };
      } else if (head.status === 0 || head.status >= 500) {
        return { progressed: false };
      } else {
        throw new UploadRefused(head.status, head.responseText);
      }
    } else {
      const created = await send('POST', this.endpoint, {
        headers: this._headers({
          'Upload-Length': String(this.file.size),
          'Upload-Metadata': `filename ${base64(this.file.name)}`,
        }),
      });
      if (created.status === 0 || created.status >= 500) return { progressed: false };
      if (created.status !== 201) throw new UploadRefused(created.status, created.responseText);
      this.url = new URL(created.getResponseHeader('Location'), window.location.href).pathname;
      localStorage.setItem(this.key, this.url);
      offset = 0;
    }
    this.onProgress(offset);
    const chunk = this.file.slice(offset, Math.min(offset + this.chunkSize, this.file.size));
    const patch = await send('PATCH', this.url, {
      headers: this._headers({
        'Upload-Offset': String(offset),
        'Content-Type': 'application/offset+octet-stream',
      }),
      body: chunk,
      onProgress: (loaded) => this.onProgress(offset + loaded),
    });
    if (patch.status === 204) {
      const submissionId = patch.getResponseHeader('Handin-Submission-Id');
      this.onProgress(Number(patch.getResponseHeader('Upload-Offset')));
      if (submissionId) return { done: true, submissionId: Number(submissionId) };
      return { progressed: true };
    }
    // 409: another tab moved it on, or is sending right now; 460: the chunk came damaged. Ask again.
    if (patch.status === 409 || patch.status === 460) return { progressed: false };
    if (patch.status === 404 || patch.status === 410) {
      this._forget();
      return { progressed: true };
    }
    if (patch.status === 0 || patch.status >= 500) return { progressed: false };
    this._forget(); // refused for good (type, size, rights): the server removed it
    throw new UploadRefused(patch.status, patch.responseText);
  }

  _forget() {
    localStorage.removeItem(this.key);
    this.url = null;
  }
}
