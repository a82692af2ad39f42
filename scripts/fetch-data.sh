#!/usr/bin/env bash
# Fetches the training data of Tessera's default model (see NOTICE and engine/train/src/data.rs):
#   @lobehub/fluent-emoji-3d@1.1.0  (Microsoft Fluent Emoji 3D, MIT)   -> DIR/fluent-emoji-3d
#   emoji-datasource-google@16.0.0  (labels MIT; Noto art Apache-2.0)  -> DIR/emoji-datasource-google
#   emojilib@4.0.3                  (keywords, MIT)                    -> DIR/emojilib
# Each tarball is fetched with `npm pack`, its sha1 checked against the pinned value below, and
# unpacked into its own folder. Idempotent: a package whose folder exists and whose tarball is
# present and verified is skipped. Usage: scripts/fetch-data.sh [DIR]   (default data/emoji)
set -euo pipefail

DIR="${1:-data/emoji}"

# name@version, folder, sha1 of the npm tarball (registry `dist.shasum`).
PACKAGES=(
  "@lobehub/fluent-emoji-3d@1.1.0 fluent-emoji-3d ff0679b2bbbf6100dd9709d8952498f08f364ac6"
  "emoji-datasource-google@16.0.0 emoji-datasource-google a80ac3e8106cbd4d8648ce758aa099e8827b6157"
  "emojilib@4.0.3 emojilib 08f79f04955ba0008336335c80997c8ac7365d5f"
)

die() {
  echo "fetch-data: error: $*" >&2
  exit 1
}

command -v npm >/dev/null || die "npm is required (https://nodejs.org); it is only used to download the tarballs"
command -v sha1sum >/dev/null || die "sha1sum is required (coreutils)"
command -v tar >/dev/null || die "tar is required"

mkdir -p "$DIR/tarballs"
DIR="$(cd "$DIR" && pwd)"

sha1_of() { sha1sum "$1" | cut -d' ' -f1; }

for entry in "${PACKAGES[@]}"; do
  read -r spec folder want <<<"$entry"
  # `npm pack` names scoped packages `scope-name-version.tgz`.
  tgz_name="$(echo "${spec#@}" | sed -e 's#/#-#' -e 's#@\([^@]*\)$#-\1#').tgz"
  tgz="$DIR/tarballs/$tgz_name"
  dest="$DIR/$folder"
  stamp="$dest/.verified-sha1"

  if [[ -f "$tgz" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    have="$(sha1_of "$tgz")"
    if [[ "$have" == "$want" ]]; then
      echo "fetch-data: $spec already present and verified ($dest)"
      continue
    fi
  fi

  if [[ ! -f "$tgz" ]] || [[ "$(sha1_of "$tgz")" != "$want" ]]; then
    echo "fetch-data: downloading $spec"
    rm -f "$tgz"
    (cd "$DIR/tarballs" && npm pack --silent "$spec" >/dev/null) || die "npm pack $spec failed"
    [[ -f "$tgz" ]] || die "npm pack $spec did not produce $tgz"
  fi

  have="$(sha1_of "$tgz")"
  if [[ "$have" != "$want" ]]; then
    bad="$tgz.bad"
    mv -f "$tgz" "$bad"
    die "sha1 mismatch for $spec: expected $want, got $have (tarball kept as $bad; not unpacked)"
  fi

  echo "fetch-data: unpacking $spec -> $dest"
  rm -rf "$dest.tmp" "$dest"
  mkdir -p "$dest.tmp"
  tar -xzf "$tgz" -C "$dest.tmp" --no-same-owner
  echo "$want" >"$dest.tmp/.verified-sha1"
  mv "$dest.tmp" "$dest"
done

echo "fetch-data: done: $DIR"
