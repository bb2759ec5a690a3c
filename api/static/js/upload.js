// Upload with a real progress bar, by picking or dropping a file. The page sends the file with tus
// (./tus.js): in chunks, resuming from the last byte the server has after a dropped connection, a
// closed laptop lid or a reload (choose the same file again). The last chunk's answer names the
// submission; we go straight to its live page. (The plain multipart endpoint stays for scripts.)
// The button is disabled, with the reason beside it, whenever the upload could not succeed: no
// attempts left or past the cut-off (the server rendered it so), or a file over the limit. Before a
// new attempt replaces one that staff have marked, the student confirms it.
import { ResumableUpload, UploadRefused } from './tus.js';
import { csrfToken, detailOf, showError } from './util.js';

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
const why = document.getElementById('upload-why');
const replaceDialog = document.getElementById('replace-dialog');
const refusedByServer = form?.dataset.refused === '1';

function sizeText(bytes) {
  if (bytes < 1024) return `${bytes} bytes`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

function fileChosen() {
  const file = input.files[0];
  showError(error, '');
  chosen.textContent = file ? `Chosen: ${file.name} (${sizeText(file.size)})` : '';
  const limit = Number(form.dataset.maxBytes);
  const tooBig = file && limit && file.size > limit;
  if (tooBig) {
    showError(error, `This file is ${sizeText(file.size)}; the limit for this assignment is ${sizeText(limit)}.`);
  }
  if (!refusedByServer) {
    button.disabled = Boolean(tooBig);
    why.textContent = tooBig ? `Too large: choose a file of at most ${sizeText(limit)}.` : '';
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
  const file = input.files[0];
  // What a screen reader says for the bar: the share and the bytes, not a bare number.
  bar.setAttribute('aria-valuetext', file ? `${value}% (${sizeText(Math.round(fraction * file.size))} of ${sizeText(file.size)})` : `${value}%`);
}

function confirmReplacing() {
  // Resolves true when the student chose to hand in the new attempt anyway.
  if (!form.dataset.replacesMarked || !replaceDialog) return Promise.resolve(true);
  return new Promise((resolve) => {
    const answer = (value) => () => { replaceDialog.close(); resolve(value); };
    document.getElementById('replace-confirm').onclick = answer(true);
    document.getElementById('replace-cancel').onclick = answer(false);
    replaceDialog.oncancel = () => resolve(false);
    replaceDialog.showModal();
  });
}

// Announce every quarter, not every event: a screen reader cannot keep up with more.
let announced = 0;

form?.addEventListener('submit', async (event) => {
  event.preventDefault();
  if (button.disabled) return;
  const file = input.files[0];
  if (!file) {
    showError(error, 'Choose a file first.');
    input.focus();
    return;
  }
  showError(error, '');
  if (!(await confirmReplacing())) {
    status.textContent = 'Nothing handed in: your marked attempt still counts.';
    return;
  }
  wrap.hidden = false;
  setProgress(0);
  button.disabled = true;
  const upload = new ResumableUpload(file, {
    endpoint: form.dataset.url.replace(/\/submissions$/, '/uploads'),
    scope: form.dataset.url,
    headers: () => ({ 'X-CSRF-Token': csrfToken() }),
    onProgress: (sent) => progressed(file.size ? sent / file.size : 1),
    onStatus: (what) => {
      if (what === 'retrying') status.textContent = 'Connection lost; trying again from the last byte received…';
    },
  });
  status.textContent = upload.resuming ? `Resuming ${file.name} where it stopped…` : `Uploading ${file.name}…`;
  announced = 0;
  try {
    const submissionId = await upload.start();
    setProgress(1);
    status.textContent = 'Received. Opening your submission…';
    window.location.assign(`/submissions/${submissionId}`);
  } catch (failure) {
    button.disabled = false;
    status.textContent = '';
    if (failure instanceof UploadRefused) {
      wrap.hidden = true;
      showError(error, detailOf(failure.status, failure.body));
    } else {
      showError(
        error,
        'The upload was interrupted. Check your connection and press Upload again: it carries on from where it stopped, also after a reload.',
      );
    }
  }
});

function progressed(fraction) {
  setProgress(fraction);
  const quarter = Math.floor(fraction * 4);
  if (quarter > announced && quarter < 4) {
    announced = quarter;
    status.textContent = `Uploading: ${quarter * 25}%`;
  }
}
