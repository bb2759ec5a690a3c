// Upload with a real progress bar (XMLHttpRequest upload.onprogress), by picking or dropping a file.
// The api answers 202 with the submission id at once; we go straight to its live page.
import { detailOf, showError } from './util.js';

const form = document.getElementById('upload-form');
const input = document.getElementById('file');
const zone = document.getElementById('drop-zone');
const chosen = document.getElementById('chosen');
const wrap = document.getElementById('progress-wrap');
const bar = document.getElementById('upload-progress');
const percent = document.getElementById('upload-percent');
const status = document.getElementById('upload-status');
const error = document.getElementById('upload-error');
const button = document.getElementById('upload-button');

// One key per chosen file: a retry after a dropped connection cannot create a second submission.
let idempotencyKey = null;

function newKey() {
  return window.crypto?.randomUUID ? window.crypto.randomUUID() : `${Date.now()}-${Math.random().toString(16).slice(2)}`;
}

function sizeText(bytes) {
  if (bytes < 1024) return `${bytes} bytes`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

function fileChosen() {
  const file = input.files[0];
  idempotencyKey = file ? newKey() : null;
  showError(error, '');
  chosen.textContent = file ? `Chosen: ${file.name} (${sizeText(file.size)})` : '';
  const limit = Number(form.dataset.maxBytes);
  if (file && limit && file.size > limit) {
    showError(error, `This file is ${sizeText(file.size)}; the limit for this assignment is ${sizeText(limit)}.`);
  }
}

input?.addEventListener('change', fileChosen);

for (const name of ['dragenter', 'dragover']) {
  zone?.addEventListener(name, (event) => {
    event.preventDefault();
    zone.classList.add('dragging');
  });
}
for (const name of ['dragleave', 'drop']) {
  zone?.addEventListener(name, () => zone.classList.remove('dragging'));
}
zone?.addEventListener('drop', (event) => {
  event.preventDefault();
  if (event.dataTransfer?.files?.length) {
    input.files = event.dataTransfer.files;
    fileChosen();
  }
});

function setProgress(fraction) {
  const value = Math.round(fraction * 100);
  bar.value = value;
  percent.textContent = `${value}%`;
}

form?.addEventListener('submit', (event) => {
  event.preventDefault();
  const file = input.files[0];
  if (!file) {
    showError(error, 'Choose a file first.');
    input.focus();
    return;
  }
  showError(error, '');
  const body = new FormData();
  body.append('file', file, file.name);
  const request = new XMLHttpRequest();
  request.open('POST', form.dataset.url);
  request.setRequestHeader('Accept', 'application/json');
  request.setRequestHeader('Idempotency-Key', idempotencyKey || (idempotencyKey = newKey()));
  wrap.hidden = false;
  setProgress(0);
  button.disabled = true;
  status.textContent = `Uploading ${file.name}…`;
  let announced = 0;
  request.upload.onprogress = (progress) => {
    if (!progress.lengthComputable) return;
    const fraction = progress.loaded / progress.total;
    setProgress(fraction);
    // Announce every quarter, not every event: a screen reader cannot keep up with more.
    const quarter = Math.floor(fraction * 4);
    if (quarter > announced && quarter < 4) {
      announced = quarter;
      status.textContent = `Uploading: ${quarter * 25}%`;
    }
  };
  request.upload.onload = () => {
    setProgress(1);
    status.textContent = 'Uploaded; waiting for the receipt…';
  };
  request.onload = () => {
    if (request.status === 202) {
      const answer = JSON.parse(request.responseText);
      status.textContent = 'Received. Opening your submission…';
      window.location.assign(`/submissions/${answer.id}`);
      return;
    }
    button.disabled = false;
    wrap.hidden = true;
    status.textContent = '';
    showError(error, detailOf(request.status, request.responseText));
    if (request.status >= 400 && request.status < 500) idempotencyKey = null; // refused: a new try is a new upload
  };
  request.onerror = () => {
    button.disabled = false;
    status.textContent = '';
    showError(error, 'The upload was interrupted. Check your connection and press Upload again; it will not be counted twice.');
  };
  request.send(body);
});
