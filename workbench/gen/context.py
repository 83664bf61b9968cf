"""User context for the personalised stage: who is searching, and what they engaged with before.

Each example carries `1 + history` context ids (-1 = empty slot), `1 + 2 x history` with brands:

    slot 0          the user:  id = row of the user in the users table          [0, U)
    slots 1..H      history:   the SID prefix (first two levels) of the user's H most recent clicked or
                               bought products strictly before the event, newest first
                               id = U + c1 * K2 + c2                              [U, U + K1 * K2)
    slots H+1..2H   brands:    (with `brands`) the same products' brands, in the same order
                               id = U + K1 * K2 + row of the brand                [.., + B)

The SID prefix says which categories the user shopped; what tells users apart inside a category
(a favourite brand) it does not carry, hence the optional brand slots.

Strictly before: clicks in the same session share its timestamp and are the very products the query
is about, so they never leak into their own context. An unknown user, and a cold one (no click or
purchase before the event), get an all-empty context: the generator then decodes exactly as without
personalisation (`known` says which users were found). A cold user's id slot stays empty too: all
the model could know of them would come from the log's later events.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


class UserContext:
    def __init__(self, users: pd.Series, events: pd.DataFrame, sids: pd.DataFrame, vocab: tuple[int, ...],
                 history: int = 5, brands: pd.Series | None = None):
        """`events`: user_id, product_id, time (clicks and purchases); `sids`: the SID table; `brands`:
        product id -> brand (missing: an empty slot), to give each history product's brand a slot too."""
        from workbench.gen.data import sid_matrix

        if len(vocab) < 2:
            raise ValueError("user history needs SIDs of at least two levels")
        self.history, self.k2 = history, vocab[1]
        self.user_index = pd.Index(users.astype(str))
        if not self.user_index.is_unique:
            raise ValueError("user ids are not unique")
        self.brands = brands is not None
        names = pd.Index(sorted(brands.dropna().astype(str).unique())) if self.brands else pd.Index([])
        self.vocab_size = len(self.user_index) + vocab[0] * vocab[1] + len(names)
        codes = sid_matrix(sids)
        prefix = pd.Series(len(self.user_index) + codes[:, 0] * self.k2 + codes[:, 1], index=sids["product_id"].to_numpy())
        ev = events[events["user_id"].isin(self.user_index) & events["product_id"].isin(prefix.index)]
        ev = ev.sort_values(["user_id", "time"], kind="stable")
        self._user = ev["user_id"].to_numpy()
        self._time = _utc(ev["time"])
        self._token = prefix.loc[ev["product_id"]].to_numpy()
        if self.brands:  # each event's brand token (-1: the product has none)
            row = names.get_indexer(brands.reindex(ev["product_id"].to_numpy()).astype(str))
            self._brand = np.where(row >= 0, len(self.user_index) + vocab[0] * vocab[1] + row, -1)
        starts = np.r_[0, np.flatnonzero(self._user[1:] != self._user[:-1]) + 1] if len(ev) else np.zeros(0, int)
        self._span = {u: (s, e) for u, s, e in zip(self._user[starts], starts, np.r_[starts[1:], len(ev)])}

    @classmethod
    def from_workspace(cls, ws, sids: pd.DataFrame, vocab: tuple[int, ...], history: int = 5,
                       brands: bool = False) -> UserContext:
        if not ws.has("users") or not ws.has("search_log"):
            raise ValueError(f"workspace {ws.path} has no users or no search log: nothing to personalise with")
        log = ws.table("search_log")
        ev = log[log["clicked"] | log["purchased"]][["user_id", "product_id", "time"]]
        brand = None
        if brands:
            products = ws.table("products")
            if "brand" not in products or products["brand"].isna().all():
                raise ValueError(f"workspace {ws.path}: history brands need a brand per product (products.brand), and it has none")
            brand = pd.Series(products["brand"].to_numpy(), index=products["product_id"].to_numpy())
        return cls(ws.table("users")["user_id"], ev, sids, vocab, history, brand)

    @property
    def width(self) -> int:
        return 1 + self.history * (2 if self.brands else 1)

    def known(self, user_ids) -> np.ndarray:
        return self.user_index.get_indexer(pd.Index(user_ids).astype(str)) >= 0

    def ids(self, user_ids, times=None) -> np.ndarray:
        """(N, 1 + H) context ids of each user, history strictly before `times` (default: all of it)."""
        user_ids = [str(u) for u in user_ids]
        out = np.full((len(user_ids), self.width), -1, np.int64)
        rows = self.user_index.get_indexer(user_ids)
        t = None if times is None else _utc(times)
        for i, (u, r) in enumerate(zip(user_ids, rows)):
            if r < 0:
                continue
            s, e = self._span.get(u, (0, 0))
            if t is not None and e > s:
                e = s + int(np.searchsorted(self._time[s:e], t[i], "left"))
            if e == s:
                continue  # cold: no history before the event, the anonymous path
            h = self._token[max(s, e - self.history): e][::-1]  # newest first
            out[i, 0], out[i, 1: 1 + len(h)] = r, h
            if self.brands:
                out[i, 1 + self.history: 1 + self.history + len(h)] = self._brand[max(s, e - self.history): e][::-1]
        return out


def _utc(times) -> np.ndarray:
    """Timestamps (naive = UTC) as datetime64[ns] in UTC."""
    return pd.to_datetime(pd.Series(times), utc=True).dt.tz_convert(None).to_numpy("datetime64[ns]")
