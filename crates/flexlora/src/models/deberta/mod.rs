//! DeBERTa-v2/v3 encoders in the Hugging Face `DebertaV2Model` layout.
//!
//! Every linear layer of attention and feed-forward is an [`AdaptedLinear`] reachable by its
//! Hugging Face module path (`encoder.layer.3.attention.self.query_proj`), so adapters can be
//! injected by PEFT-style patterns, as for [`crate::models::BertModel`]. With `share_att_key`
//! (DeBERTa-v3) the relative position embeddings also pass through `query_proj` and
//! `key_proj`, adapters included, as in transformers.

mod attention;
mod config;
mod head;

pub use attention::{RelativeContext, SelfAttention, relative_positions};
pub use config::{ATTENTION_TERMS, Activation, DebertaV2Config};
pub use head::DebertaV2Classifier;

use super::bert::EncoderInput;
use super::hf::{CheckpointError, LayerNorm, Weights, linear};
use crate::adapter::AdaptedLinear;
use crate::dropout::WithDropout;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// One encoder layer (`encoder.layer.N`).
#[derive(Debug)]
pub struct DebertaV2Layer {
    /// `attention.self`: the query, key, value (and v2 position) projections.
    pub attention: SelfAttention,
    /// `attention.output.dense`.
    pub attention_output: AdaptedLinear,
    attention_norm: LayerNorm,
    /// `intermediate.dense`.
    pub intermediate: AdaptedLinear,
    /// `output.dense`.
    pub output: AdaptedLinear,
    output_norm: LayerNorm,
}

impl DebertaV2Layer {
    fn load(
        w: &Weights,
        c: &DebertaV2Config,
        i: i64,
        device: Device,
    ) -> Result<Self, CheckpointError> {
        let p = format!("encoder.layer.{i}");
        let (h, ff, eps) = (c.hidden_size, c.intermediate_size, c.layer_norm_eps);
        let lin = |m: &str, out: i64, inp: i64| linear(w, &format!("{p}.{m}"), out, inp, device);
        let own = |term: bool, m: &str| -> Result<Option<AdaptedLinear>, CheckpointError> {
            match c.relative_attention && !c.share_att_key && term {
                true => lin(m, h, h).map(Some),
                false => Ok(None),
            }
        };
        Ok(Self {
            attention: SelfAttention {
                query_proj: lin("attention.self.query_proj", h, h)?,
                key_proj: lin("attention.self.key_proj", h, h)?,
                value_proj: lin("attention.self.value_proj", h, h)?,
                pos_key_proj: own(c.c2p(), "attention.self.pos_key_proj")?,
                pos_query_proj: own(c.p2c(), "attention.self.pos_query_proj")?,
            },
            attention_output: lin("attention.output.dense", h, h)?,
            attention_norm: LayerNorm::load(
                w,
                &format!("{p}.attention.output.LayerNorm"),
                h,
                eps,
                device,
            )?,
            intermediate: lin("intermediate.dense", ff, h)?,
            output: lin("output.dense", h, ff)?,
            output_norm: LayerNorm::load(w, &format!("{p}.output.LayerNorm"), h, eps, device)?,
        })
    }

    /// The adaptable linear layers with their module names inside the layer, in forward
    /// order: query, key, value, the v2 position projections when present, attention output,
    /// intermediate, output.
    fn named_linears(&self) -> Vec<(&'static str, &AdaptedLinear)> {
        let a = &self.attention;
        let mut v = vec![
            ("attention.self.query_proj", &a.query_proj),
            ("attention.self.key_proj", &a.key_proj),
            ("attention.self.value_proj", &a.value_proj),
        ];
        v.extend(
            a.pos_key_proj
                .as_ref()
                .map(|l| ("attention.self.pos_key_proj", l)),
        );
        v.extend(
            a.pos_query_proj
                .as_ref()
                .map(|l| ("attention.self.pos_query_proj", l)),
        );
        v.extend([
            ("attention.output.dense", &self.attention_output),
            ("intermediate.dense", &self.intermediate),
            ("output.dense", &self.output),
        ]);
        v
    }

    /// As [`DebertaV2Layer::named_linears`], mutably and without names.
    fn linears_mut(&mut self) -> Vec<&mut AdaptedLinear> {
        let a = &mut self.attention;
        let mut v = vec![&mut a.query_proj, &mut a.key_proj, &mut a.value_proj];
        v.extend(a.pos_key_proj.as_mut());
        v.extend(a.pos_query_proj.as_mut());
        v.extend([
            &mut self.attention_output,
            &mut self.intermediate,
            &mut self.output,
        ]);
        v
    }

    fn forward(
        &self,
        c: &DebertaV2Config,
        h: &Tensor,
        key_padding: &Tensor,
        relative: Option<&RelativeContext>,
        train: bool,
    ) -> Tensor {
        let ctx = self.attention.forward(c, h, key_padding, relative, train);
        let attn = self
            .attention_output
            .forward(&ctx, train)
            .with_dropout(c.hidden_dropout_prob, train);
        let attn = self.attention_norm.forward(&(attn + h));
        let ff = c.hidden_act.apply(&self.intermediate.forward(&attn, train));
        let out = self
            .output
            .forward(&ff, train)
            .with_dropout(c.hidden_dropout_prob, train);
        self.output_norm.forward(&(out + attn))
    }
}

/// The v2 convolution (`encoder.conv`) that runs beside the first layer: a 1-D convolution
/// over the embeddings, added to the first layer's output.
#[derive(Debug)]
struct ConvLayer {
    weight: Tensor,
    bias: Tensor,
    norm: LayerNorm,
}

impl ConvLayer {
    /// `LayerNorm(first + act(dropout(conv(embeddings))))` at real tokens, zeros at padding.
    fn forward(
        &self,
        c: &DebertaV2Config,
        embeddings: &Tensor,
        first: &Tensor,
        padding: &Tensor,
        real: &Tensor,
        train: bool,
    ) -> Tensor {
        let k = c.conv_kernel_size;
        let out = embeddings
            .transpose(1, 2)
            .conv1d(
                &self.weight,
                Some(&self.bias),
                [1],
                [(k - 1) / 2],
                [1],
                c.conv_groups,
            )
            .transpose(1, 2)
            .masked_fill(padding, 0.0);
        let out = c
            .conv_act
            .apply(&out.with_dropout(c.hidden_dropout_prob, train));
        self.norm.forward(&(first + out)) * real
    }
}

/// A DeBERTa-v2/v3 encoder (`DebertaV2Model`; see [`DebertaV2Classifier`] for the head).
#[derive(Debug)]
pub struct DebertaV2Model {
    /// The configuration it was built from.
    pub config: DebertaV2Config,
    word_embeddings: Tensor,
    position_embeddings: Option<Tensor>,
    token_type_embeddings: Option<Tensor>,
    /// `embeddings.embed_proj` (`hidden × embedding_size`, no bias) when the widths differ.
    embed_proj: Option<Tensor>,
    embeddings_norm: LayerNorm,
    rel_embeddings: Option<Tensor>,
    rel_norm: Option<LayerNorm>,
    conv: Option<ConvLayer>,
    /// The encoder layers.
    pub layers: Vec<DebertaV2Layer>,
    device: Device,
}

impl DebertaV2Model {
    /// Loads a DeBERTa-v2/v3 encoder from a Hugging Face folder (`config.json`,
    /// `model.safetensors`) onto `device`. Names may carry a `deberta.` prefix
    /// (`DebertaV2ForSequenceClassification` checkpoints). All weights are frozen.
    pub fn from_folder(folder: &Path, device: Device) -> Result<(Self, Weights), CheckpointError> {
        let config = DebertaV2Config::from_folder(folder)?;
        let w = Weights::read(folder, "deberta.")?;
        let model = Self::from_weights(config, &w, device)?;
        Ok((model, w))
    }

    /// Builds the encoder for `config` (already validated) from `w`.
    pub fn from_weights(
        config: DebertaV2Config,
        w: &Weights,
        device: Device,
    ) -> Result<Self, CheckpointError> {
        let c = &config;
        let (h, e, eps) = (c.hidden_size, c.embedding_size(), c.layer_norm_eps);
        let get = |name: &str, shape: &[i64]| w.tensor(name, shape, Kind::Float, device);
        let word_embeddings = get("embeddings.word_embeddings.weight", &[c.vocab_size, e])?;
        let position_embeddings = match c.position_biased_input {
            true => Some(get(
                "embeddings.position_embeddings.weight",
                &[c.max_position_embeddings, e],
            )?),
            false => None,
        };
        let token_type_embeddings = match c.type_vocab_size > 0 {
            true => Some(get(
                "embeddings.token_type_embeddings.weight",
                &[c.type_vocab_size, e],
            )?),
            false => None,
        };
        let embed_proj = match e != h {
            true => Some(get("embeddings.embed_proj.weight", &[h, e])?),
            false => None,
        };
        let embeddings_norm = LayerNorm::load(w, "embeddings.LayerNorm", h, eps, device)?;
        let (rel_embeddings, rel_norm) = match c.relative_attention {
            true => (
                Some(get(
                    "encoder.rel_embeddings.weight",
                    &[2 * c.attention_span(), h],
                )?),
                match c.norm_rel_embeddings() {
                    true => Some(LayerNorm::load(w, "encoder.LayerNorm", h, eps, device)?),
                    false => None,
                },
            ),
            false => (None, None),
        };
        let conv = match c.conv_kernel_size > 0 {
            true => Some(ConvLayer {
                weight: get(
                    "encoder.conv.conv.weight",
                    &[h, h / c.conv_groups, c.conv_kernel_size],
                )?,
                bias: get("encoder.conv.conv.bias", &[h])?,
                norm: LayerNorm::load(w, "encoder.conv.LayerNorm", h, eps, device)?,
            }),
            false => None,
        };
        let layers = (0..c.num_hidden_layers)
            .map(|i| DebertaV2Layer::load(w, c, i, device))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            config,
            word_embeddings,
            position_embeddings,
            token_type_embeddings,
            embed_proj,
            embeddings_norm,
            rel_embeddings,
            rel_norm,
            conv,
            layers,
            device,
        })
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Module paths of every adaptable linear layer, in forward order (layer by layer; within
    /// a layer query, key, value, `pos_key_proj` and `pos_query_proj` when the config has
    /// them, attention output, intermediate, output).
    pub fn linear_paths(&self) -> Vec<String> {
        self.layers
            .iter()
            .enumerate()
            .flat_map(|(i, l)| {
                l.named_linears()
                    .into_iter()
                    .map(move |(m, _)| format!("encoder.layer.{i}.{m}"))
            })
            .collect()
    }

    /// Every adaptable linear layer, in the order of [`DebertaV2Model::linear_paths`].
    pub fn linears_mut(&mut self) -> Vec<&mut AdaptedLinear> {
        self.layers
            .iter_mut()
            .flat_map(|l| l.linears_mut())
            .collect()
    }

    /// Every adaptable linear layer, in the order of [`DebertaV2Model::linear_paths`].
    pub fn linears(&self) -> Vec<&AdaptedLinear> {
        self.layers
            .iter()
            .flat_map(|l| l.named_linears().into_iter().map(|(_, l)| l))
            .collect()
    }

    /// Every weight of the encoder with its Hugging Face name (`embeddings.word_embeddings.weight`,
    /// `encoder.layer.0.attention.self.query_proj.weight`, ...), for full fine-tuning and
    /// checkpoints.
    pub fn named_parameters(&self) -> Vec<(String, &Tensor)> {
        let mut v: Vec<(String, &Tensor)> = vec![(
            "embeddings.word_embeddings.weight".into(),
            &self.word_embeddings,
        )];
        let optional = [
            (
                "embeddings.position_embeddings.weight",
                &self.position_embeddings,
            ),
            (
                "embeddings.token_type_embeddings.weight",
                &self.token_type_embeddings,
            ),
            ("embeddings.embed_proj.weight", &self.embed_proj),
            ("encoder.rel_embeddings.weight", &self.rel_embeddings),
        ];
        for (n, t) in optional {
            v.extend(t.as_ref().map(|t| (n.to_string(), t)));
        }
        let mut norms = vec![("embeddings.LayerNorm".to_string(), &self.embeddings_norm)];
        norms.extend(
            self.rel_norm
                .as_ref()
                .map(|n| ("encoder.LayerNorm".into(), n)),
        );
        if let Some(conv) = &self.conv {
            v.push(("encoder.conv.conv.weight".into(), &conv.weight));
            v.push(("encoder.conv.conv.bias".into(), &conv.bias));
            norms.push(("encoder.conv.LayerNorm".into(), &conv.norm));
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let p = format!("encoder.layer.{i}");
            for (m, l) in layer.named_linears() {
                v.push((format!("{p}.{m}.weight"), &l.weight));
                if let Some(b) = &l.bias {
                    v.push((format!("{p}.{m}.bias"), b));
                }
            }
            norms.push((
                format!("{p}.attention.output.LayerNorm"),
                &layer.attention_norm,
            ));
            norms.push((format!("{p}.output.LayerNorm"), &layer.output_norm));
        }
        for (n, norm) in norms {
            v.push((format!("{n}.weight"), &norm.weight));
            v.push((format!("{n}.bias"), &norm.bias));
        }
        v
    }

    /// Makes every encoder weight trainable (full fine-tuning) or frozen.
    pub fn set_trainable(&mut self, trainable: bool) {
        for (_, t) in self.named_parameters() {
            let _ = t.set_requires_grad(trainable);
        }
    }

    /// The last hidden states `[batch, len, hidden]`. `train` switches dropout on.
    ///
    /// `input.token_type_ids` are ignored when `type_vocab_size` is 0 (DeBERTa-v3). Sequences
    /// must not be longer than `max_position_embeddings` when `position_biased_input` is on.
    /// Padding positions of the result are zeros (transformers leaves unused values there);
    /// real tokens never see padding, which attention masks out as a key. Unlike
    /// [`crate::models::BertModel::forward`], per-token work runs on the padded batch: the
    /// v2 convolution needs the padded layout, and dynamic padding keeps the waste small.
    pub fn forward(&self, input: &EncoderInput, train: bool) -> Tensor {
        let c = &self.config;
        let (batch, len) = (input.input_ids.size()[0], input.input_ids.size()[1]);
        let lookup = |ids: &Tensor, table: &Tensor| Tensor::embedding(table, ids, -1, false, false);
        let x = lookup(&input.input_ids, &self.word_embeddings);
        let x = match &self.position_embeddings {
            Some(table) => {
                let positions = Tensor::arange(len, (Kind::Int64, self.device)).unsqueeze(0);
                x + lookup(&positions, table)
            }
            None => x,
        };
        let x = match &self.token_type_embeddings {
            Some(table) => x + lookup(&input.token_type_ids, table),
            None => x,
        };
        let x = match &self.embed_proj {
            Some(proj) => x.linear::<Tensor>(proj, None),
            None => x,
        };
        // Padding is zeroed after the layer norm, as in transformers: the v2 convolution reads
        // the embeddings of a real token's neighbours, and past the end those must be zeros.
        let real = input.attention_mask.to_kind(Kind::Float).unsqueeze(-1);
        let embeddings =
            (self.embeddings_norm.forward(&x) * &real).with_dropout(c.hidden_dropout_prob, train);
        let padding = input.attention_mask.eq(0);
        let key_padding = padding.view([batch, 1, 1, len]);
        let relative = self.rel_embeddings.as_ref().map(|table| RelativeContext {
            positions: relative_positions(
                len,
                c.position_buckets,
                c.max_relative_positions(),
                self.device,
            ),
            embeddings: match &self.rel_norm {
                Some(n) => n.forward(table),
                None => table.shallow_clone(),
            },
            span: c.attention_span(),
        });
        let mut h = embeddings.shallow_clone();
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(c, &h, &key_padding, relative.as_ref(), train);
            if let (0, Some(conv)) = (i, &self.conv) {
                h = conv.forward(c, &embeddings, &h, &padding.unsqueeze(-1), &real, train);
            }
        }
        h * real
    }
}
